"""Declarative config files that fail one way: every problem, each a ``path: reason`` (pure).

Route configs, access policies and the gateway's auth files all read their text
here (bounded in size and depth, TOML or JSON, duplicate JSON keys refused) and
turn a pydantic ValidationError into :class:`Problem` rows with the same paths
(``services.orders.retries.attempts``, ``identity[2].calls[0]``, ...). A model
validator that finds several problems raises :class:`Checks` with paths relative
to the model.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from natsmesh.wire._errors import MeshError

__all__ = [
    "MAX_CONFIG_BYTES",
    "Checks",
    "ConfigError",
    "Loc",
    "Problem",
    "decode_document",
    "load_as",
    "loc_path",
    "loc_problems",
    "parse_as",
    "problems_of",
    "read_document",
    "validate_as",
]

MAX_CONFIG_BYTES: Final = 1024 * 1024
_SHOWN_PROBLEMS: Final = 50
_BARE_LOC = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_REASONS: Final = {"extra_forbidden": "unknown field", "missing": "missing required field"}

Loc = tuple[str | int, ...]
Format = Literal["toml", "json"]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config: where (a dotted path) and why."""

    path: str
    reason: str


class ConfigError(MeshError, ValueError):
    """A config that cannot be used; ``problems`` says every reason."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        lines = [f"{p.path}: {p.reason}" for p in self.problems[:_SHOWN_PROBLEMS]]
        if len(self.problems) > _SHOWN_PROBLEMS:
            lines.append(f"... and {len(self.problems) - _SHOWN_PROBLEMS} more problems")
        super().__init__("\n".join(lines))


class Checks(ValueError):
    """Raised by a model validator with problems at paths relative to the model."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(reason for _, reason in problems))
        self.problems = problems


def loc_path(loc: Iterable[str | int]) -> str:
    """``("services", "orders", "retries", 0)`` as ``services.orders.retries[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _BARE_LOC.fullmatch(part):
            out += f".{part}" if out else part
        else:
            # A key that failed validation: quoted, escaped and cut so it cannot flood a log.
            shown = part if len(part) <= 64 else part[:61] + "..."
            out += f"[{json.dumps(shown)}]"
    return out or "<config>"


def problems_of(exc: ValidationError) -> list[Problem]:
    """Every problem pydantic found, at its path, with a reason a person can act on."""
    return [Problem(loc_path(loc), reason) for loc, reason in loc_problems(exc)]


def loc_problems(exc: ValidationError) -> list[tuple[Loc, str]]:
    """:func:`problems_of` with each path as a ``Loc`` (for a validator to raise as Checks)."""
    problems: list[tuple[Loc, str]] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(error["loc"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, Checks):
            problems += [(loc + rel, reason) for rel, reason in cause.problems]
        elif isinstance(cause, ValueError):
            problems.append((loc, str(cause)))
        else:
            problems.append((loc, _REASONS.get(error["type"], error["msg"])))
    return problems


class _Reject(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Reject(f"duplicate key {json.dumps(key[:64])}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Reject(f"{name} is not a number")


def _decode(text: str, fmt: Literal["toml", "json"]) -> object:
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        reason = "nested too deeply"
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, _Reject) as exc:
        reason = str(exc)
    except ValueError:
        # int() refuses numbers of more than 4,300 digits (CVE-2020-10735).
        reason = "a number has too many digits"
    _file_problem(f"not {fmt.upper()}: {reason}")


def _file_problem(reason: str) -> NoReturn:
    raise ConfigError([Problem("<file>", reason)])


def decode_document(
    data: bytes | str, *, format: Literal["toml", "json"] | None = None
) -> dict[str, Any]:
    """Decode a config file's text (bounded in size and depth) to a dict; raise ConfigError.

    With ``format=None`` the text is JSON if it starts with ``{``, else TOML.
    """
    if len(data) > MAX_CONFIG_BYTES or (
        isinstance(data, str) and len(data.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES
    ):
        _file_problem(f"larger than {MAX_CONFIG_BYTES} bytes")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            _file_problem(f"not UTF-8 text (invalid byte at offset {exc.start})")
    else:
        text = data.removeprefix("\ufeff")
    fmt = format or ("json" if text.lstrip().startswith("{") else "toml")
    decoded = _decode(text, fmt)
    if not isinstance(decoded, dict):
        _file_problem("the top level must be a JSON object")
    return decoded


def read_document(
    path: str | Path, *, format: Literal["toml", "json"] | None = None
) -> dict[str, Any]:
    """Read and decode a config file (``format``, else by suffix, else by its text).

    Raises ConfigError with one ``<file>`` problem.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        reason = f"no such file: {path}"
    except IsADirectoryError:
        reason = f"a directory, not a file: {path}"
    except OSError as exc:
        reason = f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    else:
        suffix = path.suffix.lower()
        fmt: Literal["toml", "json"] | None = format or (
            "toml" if suffix == ".toml" else "json" if suffix == ".json" else None
        )
        return decode_document(data, format=fmt)
    _file_problem(reason)


def validate_as(model: type[M], data: object, error: type[ConfigError] = ConfigError) -> M:
    """``data`` (decoded) as a ``model``; raise ``error`` with every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(problems_of(exc)) from None


def parse_as(
    model: type[M],
    data: bytes | str,
    error: type[ConfigError] = ConfigError,
    *,
    format: Format | None = None,
) -> M:
    """A config file's text as a ``model`` (see :func:`decode_document`); raise ``error``."""
    try:
        decoded = decode_document(data, format=format)
    except ConfigError as exc:
        raise error(exc.problems) from None
    return validate_as(model, decoded, error)


def load_as(
    model: type[M],
    path: str | Path,
    error: type[ConfigError] = ConfigError,
    *,
    format: Format | None = None,
) -> M:
    """A config file as a ``model`` (see :func:`read_document`); raise ``error``."""
    try:
        decoded = read_document(path, format=format)
    except ConfigError as exc:
        raise error(exc.problems) from None
    return validate_as(model, decoded, error)
