"""Helpers for declarative config files that should fail the way natsmesh's own do.

Every problem is reported at once, each as ``path: reason`` with the same path
spelling (``services.orders.retries.attempts``, ``rules[2].allow[0]``): route
configs, access policies and the HTTP gateway's auth files use these, and so may
a user's own pydantic-validated config::

    from natsmesh.config import ConfigError, problems_of, read_document

    try:
        config = MyConfig.model_validate(read_document("my.toml"))
    except pydantic.ValidationError as exc:
        raise ConfigError(problems_of(exc)) from None

A model validator that finds several problems raises :class:`Checks` with their
paths relative to the model.
"""

from __future__ import annotations

from natsmesh.wire._config import *  # noqa: F403  (the public names of the pure module)
from natsmesh.wire._config import __all__ as __all__
