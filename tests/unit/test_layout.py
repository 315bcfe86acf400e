"""The layout holds: packages depend the way ARCHITECTURE.md says, modules stay small, and the
design document names only paths that exist."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 300


def modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", list(modules("gateway")), ids=str)
def test_gateway_uses_the_adapter_contract_only(path: Path) -> None:
    if path.relative_to(ROOT).as_posix() == "gateway/cli.py":
        return  # the composition root: it builds the concrete adapters
    adapters = {n for n in imported(path) if n.split(".")[0] == "adapters"}
    beyond = {n for n in adapters if n != "adapters.base" and not n.startswith("adapters.base.")}
    assert not beyond, f"{path} imports {sorted(beyond)}: only adapters.base is the contract"


@pytest.mark.parametrize("path", list(modules("adapters")), ids=str)
def test_adapters_never_import_the_gateway_or_litestar(path: Path) -> None:
    bad = {n for n in imported(path) if n.split(".")[0] in ("gateway", "litestar")}
    assert not bad, f"{path} imports {sorted(bad)}"


@pytest.mark.parametrize("path", [*modules("gateway"), *modules("adapters")], ids=str)
def test_no_module_is_over_300_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_architecture_names_only_paths_that_exist() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"\b((?:gateway|adapters|tests|config|bench)/[\w/.-]*\w)", text))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_architecture_describes_every_package() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for package in ("gateway", "adapters"):
        for init in sorted((ROOT / package).glob("*/__init__.py")):
            name = init.parent.relative_to(ROOT).as_posix()
            assert f"`{name}`" in text, f"ARCHITECTURE.md does not describe {name}"
