"""The metric catalogue, docs/metrics.md and the code cannot drift apart: the docs hold
the catalogue's table, every declared metric is used, no code names a metric but
through the catalogue's constants, and every metric name any document mentions exists."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from binhoard import metric_names
from binhoard.domain.pitr import PHASES
from binhoard.metric_names import CATALOGUE, RESTORE_PHASE, SPECS, markdown_table

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "binhoard"
CATALOGUE_FILE = SRC / "metric_names.py"


def sources() -> dict[Path, str]:
    return {path: path.read_text() for path in SRC.rglob("*.py") if path != CATALOGUE_FILE}


def test_docs_hold_the_catalogue_table() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert markdown_table() in docs, (
        "docs/metrics.md is not the catalogue's table: run python -m binhoard.metric_names"
    )


def test_every_metric_name_a_document_mentions_exists() -> None:
    """In every Markdown file: a backticked ``binhoard.<x>.<y>`` that is not a module."""
    mentioned = re.compile(r"`(binhoard(?:\.[a-z][a-z0-9_]*)+)`")
    unknown = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in mentioned.findall(path.read_text()):
            if name not in SPECS and importlib.util.find_spec(name) is None:
                unknown.append(f"{path.name}: {name}")
    assert unknown == []


def test_every_declared_metric_is_used_in_the_code() -> None:
    """Each constant (ages are used through their time) is named outside the catalogue."""
    text = "\n".join(sources().values())
    constants = {
        name: value
        for name, value in vars(metric_names).items()
        if name.isupper() and isinstance(value, str) and value in SPECS
    }
    assert set(constants.values()) == set(SPECS)
    unused = [
        name
        for name, value in constants.items()
        if SPECS[value].kind != "age" and not re.search(rf"\b{name}\b", text)
    ]
    assert unused == []


def test_no_code_spells_a_metric_name_but_the_catalogue() -> None:
    literals = []
    for path, text in sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in SPECS:
                literals.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert literals == []


def test_the_restore_phase_numbers_are_the_phase_machine_s() -> None:
    help_text = SPECS[RESTORE_PHASE].help
    described = re.findall(r"(\d+) ([a-z_]+)", help_text)
    assert [(int(n), phase) for n, phase in described] == list(enumerate(PHASES))


def test_prometheus_names_are_distinct() -> None:
    names = [spec.prometheus_name for spec in CATALOGUE]
    assert len(set(names)) == len(names)
