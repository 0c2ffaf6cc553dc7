"""The exception tree drawn in natsmesh.wire._errors' docstring is the real one."""

from __future__ import annotations

import importlib
import pkgutil
import re

import gateway
import natsmesh
from natsmesh import MeshError
from natsmesh.wire import _errors


def _every_module() -> None:
    for package in (natsmesh, gateway):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.endswith("__main__"):  # runs the command line
                importlib.import_module(info.name)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def _drawn() -> dict[str, int]:
    """Each class in the docstring's tree, with its depth (the column its name starts at)."""
    doc = _errors.__doc__ or ""
    tree = doc[doc.index("    MeshError") : doc.index("Remote failures")]
    drawn = {}
    for line in tree.splitlines():
        found = re.search(r"(?:── )?([A-Z][A-Za-z]+)(?:\s|$)", line)
        if found and ("──" in line or line.strip() == "MeshError"):
            drawn[found.group(1)] = found.start(1)
    return drawn


def test_every_mesh_error_is_drawn_in_the_tree() -> None:
    _every_module()
    drawn = _drawn()
    missing = {c.__name__ for c in _subclasses(MeshError)} - set(drawn)
    assert not missing, f"not in wire/_errors.py's exception tree: {sorted(missing)}"


def test_the_tree_draws_no_class_that_is_not_a_mesh_error() -> None:
    _every_module()
    real = {c.__name__ for c in _subclasses(MeshError)} | {"MeshError"}
    assert set(_drawn()) <= real


def test_each_class_is_drawn_under_its_parent() -> None:
    _every_module()
    drawn = _drawn()
    by_name = {c.__name__: c for c in _subclasses(MeshError)}
    for name, column in drawn.items():
        if name == "MeshError":
            continue
        parents = [b.__name__ for b in by_name[name].__bases__ if issubclass(b, MeshError)]
        assert len(parents) == 1, name
        assert drawn[parents[0]] < column, f"{name} is not drawn under {parents[0]}"


def test_the_public_errors_are_exported() -> None:
    for name in ("CredentialsError", "MessageTooLarge", "PermissionDenied"):
        assert name in natsmesh.__all__
        assert issubclass(getattr(natsmesh, name), MeshError)
