"""A real ``binhoard daemon`` process for integration tests, driven only over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.support.cli import ROOT, binhoard_command, cli_env
from tests.support.waiting import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DaemonProcess:
    """``binhoard daemon --config FILE`` with ``config`` (its ``http_port`` chosen here),
    its output in ``log``; started, killed and restarted at will."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.port = free_port()
        self.config_file = directory / "binhoard.json"
        self.config_file.write_text(json.dumps({**config, "http_port": self.port}, indent=1))
        self.log = directory / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                binhoard_command("daemon", "--config", str(self.config_file)),
                cwd=ROOT,
                env=cli_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(f"the daemon to answer (log: {self.log})", self._healthy, timeout=30)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the daemon exited with {self.process.returncode}:\n{self.tail()}"
            )
        try:
            return self.client.get("/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """``kill -9``."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM; the exit status, which must come within ``timeout`` seconds."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.client.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # --- the API ----------------------------------------------------------------------
    def get(self, path: str) -> Any:
        answer = self.client.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()

    def send(self, method: str, path: str, body: dict[str, Any], status: int = 200) -> Any:
        answer = self.client.request(method, path, json=body)
        assert answer.status_code == status, (method, path, answer.status_code, answer.text)
        return answer.json()

    def mode(self) -> str:
        return str(self.get("/status")["mode"])

    def backups(self) -> list[dict[str, Any]]:
        listed = self.get("/backup")["backups"]
        return [] if listed is None else list(listed)

    def wait_mode(self, mode: str, timeout: float = 120) -> None:
        def reached() -> bool:
            status = self.get("/status")
            if status["mode"] == "restore":
                restore = self.client.get("/status/restore")
                if restore.status_code == 200 and restore.json()["phase"] == "failed":
                    raise AssertionError(f"the restore failed: {restore.json()}\n{self.tail()}")
            return status["mode"] == mode

        wait_for(f"mode {mode} (log: {self.log})", reached, timeout=timeout)
