"""One public surface, and the examples and the gateway use it.

The layering itself (pure layers import no I/O, only transport/_nats.py imports nats, nothing
imports the CLI) is import-linter's contracts in pyproject.toml, run by .ci/run; that
only the transport holds nats-py's client (a name-level rule import-linter cannot state)
is checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import natsmesh

ROOT = Path(__file__).parent.parent
PUBLIC_MODULES = {"natsmesh.config", "natsmesh.testing"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_public_surface_is_explicit() -> None:
    public = {n for n in dir(natsmesh) if n.isidentifier() and not n.startswith("_")}
    # Submodules show up as attributes once imported; only the API may be public.
    modules = {"testing", "config"} | {p.parent.name for p in _subpackages()}
    assert public - modules == set(natsmesh.__all__) - {"__version__"}
    for name in natsmesh.__all__:
        assert getattr(natsmesh, name) is not None
    assert all(p.name.startswith("_") or p.stem in modules for p in _package_modules())


def _package_modules() -> list[Path]:
    return [p for p in (ROOT / "natsmesh").glob("*.py") if p.name != "__init__.py"]


def _subpackages() -> list[Path]:
    return list((ROOT / "natsmesh").glob("*/__init__.py"))


def test_every_module_of_a_subpackage_is_private() -> None:
    for package in _subpackages():
        for path in package.parent.glob("*.py"):
            assert path.name == "__init__.py" or path.name.startswith("_"), path


@pytest.mark.parametrize("package", ["examples", "gateway"])
def test_examples_and_the_gateway_use_only_the_public_api(package: str) -> None:
    paths = list((ROOT / package).rglob("*.py"))
    assert paths
    for path in paths:
        for name in _imports(path):
            private = name.startswith("natsmesh.") and name not in PUBLIC_MODULES
            assert not private, f"{path} imports {name}"


MODULE_LINES = 400
FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted([*(ROOT / "natsmesh").rglob("*.py"), *(ROOT / "gateway").rglob("*.py")])


def test_modules_and_functions_stay_small() -> None:
    # STYLE.md: small modules with one job, small functions. A limit a reviewer would
    # otherwise count by hand.
    too_big = []
    for path in _sources():
        source = path.read_text()
        if source.count("\n") > MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LINES:
                    where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                    too_big.append(f"{where}: {length} lines")
    assert not too_big, "\n".join(too_big)


# -- the seam to NATS ----------------------------------------------------------------------
#
# Above natsmesh/transport/ everything talks to NATS through a Link (transport/_link.py),
# never through nats-py's client. import-linter keeps `nats` itself out; these checks keep
# the client out, by the ways it could come in: its type (or its Subscription's), imported
# to be used at run time (constructed, isinstance'd), or the seam's functions that take or
# return one; the escape hatch `.nats` (Mesh.nats, Link.nats), read anywhere but in the
# hatch itself; and nats-py's Msg.respond(), a publish on the client behind the message.
# natsmesh/bench/ is exempt: its baselines are hand-written nats-py by design.

#: Names of the seam that take or return the raw client: only a Link uses them.
RAW_CLIENT_NAMES = {
    "NATS",
    "Subscription",  # nats-py's, from _transport; a Link's is natsmesh's own (_link)
    "connect",
    "request",
    "publish",
    "subscribe_direct",
    "flush",
    "listen_refusals",
    "server_zone",
    "server_cluster",
}
#: Where `.nats` may be read: the public escape hatch's own body, and argparse's `args`.
NATS_HATCH = ("nats", "args")


def _under_type_checking(tree: ast.Module) -> set[int]:
    """ids of the nodes inside an ``if TYPE_CHECKING:`` block."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def raw_client_uses(source: str) -> list[str]:
    """Where ``source`` (a module above the seam) could reach nats-py's client."""
    tree = ast.parse(source)
    typing_only = _under_type_checking(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if not module.startswith("natsmesh.transport.") or module == "natsmesh.transport._link":
            continue  # the Link's own names (its Subscription included) are the seam's API
        for alias in node.names:
            typing_only_type = alias.name == "NATS" and id(node) in typing_only
            if alias.name in RAW_CLIENT_NAMES and not typing_only_type:
                found.append(f"line {node.lineno}: imports {alias.name} from {module}")
    hatch_bodies = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef) and f.name == NATS_HATCH[0]
        for n in ast.walk(f)
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr != "nats" or id(node) in hatch_bodies:
            continue
        if not (isinstance(node.value, ast.Name) and node.value.id == NATS_HATCH[1]):
            found.append(f"line {node.lineno}: reads {ast.unparse(node)}")
    for node in ast.walk(tree):
        # nats-py's Msg.respond() publishes on the client the message came through.
        if isinstance(node, ast.Attribute) and node.attr == "respond":
            found.append(f"line {node.lineno}: {ast.unparse(node)} (publish through a Link)")
    return found


def _above_the_seam() -> list[Path]:
    seam = {ROOT / "natsmesh" / "transport", ROOT / "natsmesh" / "bench"}
    return [p for p in _sources() if not seam & set(p.parents)]


def test_only_the_seam_holds_the_nats_client() -> None:
    paths = _above_the_seam()
    assert len(paths) > 50
    found = [
        f"{p.relative_to(ROOT)} {use}" for p in paths for use in raw_client_uses(p.read_text())
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from natsmesh.transport._transport import NATS\n",
        "from natsmesh.transport._transport import connect\n",
        "from natsmesh.transport._flush import flush\n",
        "from natsmesh.transport._transport import Msg, Subscription\n",
        "from natsmesh.transport._link import Link\nasync def f(m):\n    await m.nats.flush()\n",
        "def f(link):\n    return link.nats\n",
        "async def on(msg):\n    await msg.respond(b'')\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\n"
        "from natsmesh.transport._transport import NATS\n",
    ],
)
def test_the_seam_check_sees_the_raw_client(source: str) -> None:
    assert raw_client_uses(source)


def test_the_seam_check_lets_the_hatch_and_annotations_be() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from natsmesh.transport._transport import NATS\n"
        "class Mesh:\n    @property\n    def nats(self) -> NATS:\n        return self._link.nats\n"
        "def server_of(args):\n    return args.nats\n"
    )
    assert raw_client_uses(source) == []
