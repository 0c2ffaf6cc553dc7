"""The architecture, checked: pure layers import no I/O, one public surface, examples use it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import natsmesh

ROOT = Path(__file__).parent.parent
PURE = [
    "_errors",
    "_subjects",
    "_codec",
    "_headers",
    "_policy",
    "_micro",
    "_spec",
    "_context",
    "_routes",
    "_control",
    "_registry",
    "_describe",
    "_policy_auth",
    "_config",
    "_zones",
    "_ejector",
    "_schema_text",
]
IO_MODULES = {"nats", "anyio", "asyncio", "socket", "subprocess", "uvloop"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_layers_import_no_io(module: str) -> None:
    imported = _imports(ROOT / "natsmesh" / f"{module}.py")
    assert not {name.split(".")[0] for name in imported} & IO_MODULES


def test_public_surface_is_explicit() -> None:
    public = {n for n in dir(natsmesh) if n.isidentifier() and not n.startswith("_")}
    # Submodules show up as attributes once imported; only the API may be public.
    modules = {"testing", "config"}
    assert public - modules == set(natsmesh.__all__) - {"__version__"}
    for name in natsmesh.__all__:
        assert getattr(natsmesh, name) is not None
    assert all(p.name.startswith("_") or p.stem in modules for p in _package_modules())


def _package_modules() -> list[Path]:
    return [p for p in (ROOT / "natsmesh").glob("*.py") if p.name != "__init__.py"]


@pytest.mark.parametrize("package", ["examples", "gateway"])
def test_examples_and_the_gateway_use_only_the_public_api(package: str) -> None:
    paths = list((ROOT / package).rglob("*.py"))
    assert paths
    for path in paths:
        for name in _imports(path):
            assert not name.startswith("natsmesh._"), f"{path} imports {name}"


GATEWAY_PURE = ["_paths", "_schemas", "_limits", "_docs", "_auth", "_auth_config", "_auth_keys"]


@pytest.mark.parametrize("module", GATEWAY_PURE)
def test_the_gateways_pure_modules_import_no_io(module: str) -> None:
    imported = _imports(ROOT / "gateway" / f"{module}.py")
    assert not {name.split(".")[0] for name in imported} & (IO_MODULES | {"uvicorn", "httptools"})


def test_natsmesh_imports_the_gateway_only_when_a_command_needs_it() -> None:
    for path in _package_modules():
        top = ast.parse(path.read_text()).body
        for node in top:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == "gateway"], path
