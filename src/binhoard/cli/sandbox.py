"""``binhoard sandbox``: a throw-away MariaDB in a directory, for trying binhoard out."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import pymysql

from binhoard.cli.common import json_option
from binhoard.cli.keys import generate_key_file, read_identity_file
from binhoard.domain.errors import SandboxError
from binhoard.server import sql
from binhoard.server.sandbox import Sandbox

_root_option = click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=Path(".sandbox"),
    show_default=True,
    help="Directory that holds sandboxes, one subdirectory each.",
)
_name_argument = click.argument("name", default="default")


def _sandbox(root: Path, name: str) -> Sandbox:
    if not name or "/" in name or name.startswith("."):
        raise SandboxError(f"invalid sandbox name {name!r}")
    return Sandbox(root / name)


@click.group("sandbox")
def sandbox_group() -> None:
    """Manage sandbox MariaDB instances (./.sandbox/NAME, loopback only)."""


@sandbox_group.command("start")
@_name_argument
@_root_option
@click.option("--server-id", type=int, help="server_id of a new sandbox (default: its port).")
@click.option("--port", type=int, help="TCP port of a new sandbox (default: a free one).")
def start(name: str, root: Path, server_id: int | None, port: int | None) -> None:
    """Create (first time) and start sandbox NAME."""
    box = Sandbox(_sandbox(root, name).directory, server_id=server_id, port=port)
    status = box.start()
    click.echo(
        f"sandbox {status.name} running: pid {status.pid}, 127.0.0.1:{status.port}, "
        f"socket {status.socket}, server_id {status.server_id}"
    )


@sandbox_group.command("create")
@_name_argument
@_root_option
@click.option("--server-id", type=int, help="server_id (default: its port).")
@click.option("--empty", is_flag=True, help="Leave the datadir empty, to restore a backup into.")
def create(name: str, root: Path, server_id: int | None, empty: bool) -> None:
    """Create sandbox NAME without starting it."""
    box = Sandbox(_sandbox(root, name).directory, server_id=server_id)
    box.create(initialize=not empty)
    click.echo(f"sandbox {name} created in {box.directory}" + (" (empty datadir)" if empty else ""))


@sandbox_group.command("stop")
@_name_argument
@_root_option
def stop(name: str, root: Path) -> None:
    """Stop sandbox NAME (only that instance, by its pid)."""
    box = _sandbox(root, name)
    stopped = box.stop()
    click.echo(f"sandbox {name} {'stopped' if stopped else 'was not running'}")


@sandbox_group.command("status")
@_name_argument
@_root_option
@json_option
def status(name: str, root: Path, as_json: bool) -> None:
    """Show whether sandbox NAME runs, and where. Exits 1 when it does not run."""
    box = _sandbox(root, name)
    if not box.created:  # created --empty, for a restore, is a sandbox too (not running)
        raise SandboxError(f"no sandbox {name} in {root}")
    info = box.status()
    if as_json:
        click.echo(json.dumps(info.as_dict()))
    else:
        state = f"running (pid {info.pid})" if info.running else "stopped"
        click.echo(f"sandbox {info.name}: {state}")
        click.echo(f"  directory {info.directory}")
        click.echo(f"  address   127.0.0.1:{info.port}  socket {info.socket}")
        click.echo(f"  server_id {info.server_id}")
    if not info.running:
        sys.exit(1)


@sandbox_group.command("sql")
@click.argument("statements", required=False)
@click.option("--name", default="default", show_default=True, help="Sandbox name.")
@_root_option
def sql_command(statements: str | None, name: str, root: Path) -> None:
    """Run STATEMENTS (or standard input) on a sandbox; print results tab-separated."""
    box = _sandbox(root, name)
    if box.pid() is None:
        raise SandboxError(f"sandbox {name} is not running (binhoard sandbox start {name})")
    text = statements if statements is not None else sys.stdin.read()
    try:
        results = box.execute_script(text)
    except pymysql.err.MySQLError as exc:
        raise sql.server_error(exc, f"sandbox {name}") from None
    for columns, rows in results:
        click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join("NULL" if v is None else _text(v) for v in row))


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", errors="replace")
    return str(value)


@sandbox_group.command("config")
@_name_argument
@_root_option
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Configuration file to write (.json).",
)
@click.option(
    "--site",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory of the local backup site.",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path),
    required=True,
    help="age key file (binhoard keys generate); created if missing.",
)
def config_command(name: str, root: Path, output: Path, site: Path, key_file: Path) -> None:
    """Write a binhoard configuration that backs sandbox NAME up to a local directory."""
    box = _sandbox(root, name)
    if not box.created:
        raise SandboxError(f"no sandbox {name} in {root} (binhoard sandbox start {name})")
    if key_file.exists():
        identity = read_identity_file(key_file)
    else:
        generate_key_file(key_file)
        identity = read_identity_file(key_file)
    data = box.binhoard_config(
        site_directory=site.resolve(),
        public_key=str(identity.recipient),
        private_key=identity.secret_text(),
        work_dir=box.directory / "binhoard",
    )
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a private key
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    click.echo(f"wrote {output} (backup site {site})")
