"""Typed helpers that read settings from the environment and fail loudly.

Every setting of backupsite comes from the environment (optionally loaded from a
``.env`` file by ``settings.py``). A secret may also be given as ``NAME_FILE``
pointing at a file holding it (Docker/Kubernetes secrets).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from backupsite.private import private_dir

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# Values that appear in docs and examples; a production process refuses them.
PLACEHOLDERS = {"", "change-me", "changeme", "secret", "placeholder", "xxx"}


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"The environment variable {name} is required.")
        return default
    return value


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), not {value!r}.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}.")
    return number


def env_list(name: str, default: list[str] | None = None, *, sep: str = ",") -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return list(default or [])
    return [item.strip() for item in value.split(sep) if item.strip()]


def env_secret(name: str) -> str | None:
    """Return ``$NAME`` or the content of the file named by ``$NAME_FILE``."""
    value = os.environ.get(name)
    if value is not None:
        return value.strip()
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path} cannot be read: {exc.strerror}.") from None
    return None


def is_placeholder(value: str | None) -> bool:
    return value is None or value.strip().lower() in PLACEHOLDERS or value.startswith("change-me")


def dev_secret(path: Path, factory) -> str:
    """Return the development secret stored in *path*, creating it (mode 0600) once."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    value = factory()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def required_secret(name: str, *, debug: bool, dev_file: Path, factory) -> str:
    """A secret that production must set and development generates once."""
    value = env_secret(name)
    if not is_placeholder(value):
        return value  # type: ignore[return-value]
    if debug:
        return dev_secret(dev_file, factory)
    raise ImproperlyConfigured(
        f"{name} is missing or a placeholder. Set it (or {name}_FILE) in the environment; "
        "development mode (DEBUG=1) generates one under the data directory instead."
    )


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()
