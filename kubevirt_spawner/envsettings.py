"""Reading the ``KVS_*`` environment variables the hub configs and scripts
take, so that a wrong value stops with one line naming the variable, before
anything is created (pure: they read the mapping they are given)."""

from __future__ import annotations

import os
from collections.abc import Mapping

TRUE, FALSE = ("1", "yes", "true", "on"), ("0", "no", "false", "off")


class EnvError(ValueError):
    """A KVS_* variable with a value that cannot be used; str() is the one line."""


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def port(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    raw = _env(environ).get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise EnvError(f"{name} must be a TCP port number (1-65535), not {raw!r}")
    return int(raw)


def flag(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    raw = _env(environ).get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise EnvError(f"{name} must be 1 or 0 (yes/no, true/false), not {raw!r}")


def absolute_path(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    raw = _env(environ).get(name, "")
    if raw == "":
        return default
    if not os.path.isabs(raw):
        raise EnvError(f"{name} must be an absolute path, not {raw!r}")
    return raw


def text(
    name: str, default: str, pattern: str, what: str, environ: Mapping[str, str] | None = None
) -> str:
    import re

    raw = _env(environ).get(name, "")
    if raw == "":
        return default
    if not re.fullmatch(pattern, raw):
        raise EnvError(f"{name} must be {what}, not {raw!r}")
    return raw


def integer(
    name: str,
    default: int,
    minimum: int,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    raw = _env(environ).get(name, "").strip()
    if raw == "":
        return default
    value = int(raw) if raw.isdigit() else None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        span = f"{minimum} or more" if maximum is None else f"{minimum}-{maximum}"
        raise EnvError(f"{name} must be a whole number ({span}), not {raw!r}")
    return value


def choice(
    name: str, default: str, choices: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> str:
    raw = _env(environ).get(name, "").strip()
    if raw == "":
        return default
    if raw not in choices:
        raise EnvError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw
