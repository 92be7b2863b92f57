"""The layer order of README "Layout": no module imports from a layer above its own.

Imports inside functions count too (a lazy import is still a dependency). Packages of one layer
do not import one another either, so each layer can be read knowing only the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "brainseg"

#: Lowest first. Keep in step with the "Layout" section of README.md.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors"),
    ("fileio", "config", "runtime", "locks"),
    ("data", "metrics", "losses", "models", "protocol"),
    ("training",),
    ("inference",),
    ("evaluation", "reporting", "export", "bundles"),
    ("compare", "engine"),
    ("serve",),
    ("commands",),
    ("cli",),
    ("__main__",),
)
LEVEL = {name: k for k, names in enumerate(LAYERS) for name in names}


def _unit(path: Path) -> str:
    """The package (first folder) or top-level module a file belongs to."""
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "brainseg":
                out.add(parts[1] if len(parts) > 1 else "__init__")
    return out


FILES = sorted(SRC.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    assert {_unit(p) for p in FILES} <= set(LEVEL)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_from_lower_layers(path: Path) -> None:
    me = _unit(path)
    bad = sorted(t for t in _imports(path) if t != me and LEVEL[t] >= LEVEL[me])
    assert not bad, f"{path.relative_to(SRC)} (layer {LEVEL[me]}) imports {bad} (layers {[LEVEL[b] for b in bad]})"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_file_says_its_job_and_stays_short(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.strip(), f"{path.relative_to(SRC)} has no opening docstring"
    assert len(text.splitlines()) <= 450, f"{path.relative_to(SRC)} has {len(text.splitlines())} lines"
