"""The contract every destination kind implements.

A kind is one class in its own module, registered in ``destinations.backends.REGISTRY``.
It reads its settings through a typed ``Conf`` (validated when read), builds itself from
a Destination row at run time, and raises :class:`DestinationError` only, saying whether
retrying could help.

Layout at every destination: ``<base path>/backupsite/<job slug>/<archive>``. Every write
goes to a temporary name and is renamed only once size (and checksum where possible)
matched, so nothing partial ever looks complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

ProgressCallback = Callable[[int], None]
ROOT_FOLDER = "backupsite"


class DestinationError(Exception):
    """A destination failed. The message is shown to users: it must be readable and
    never contain a secret. ``permanent`` means retrying will not help (disk full,
    permission denied, bad configuration)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    modified: float | None = None


class Conf:
    """Base for a kind's typed settings. Subclasses are frozen dataclasses whose
    ``parse`` validates a settings dict and raises ValueError with a readable message."""

    @classmethod
    def parse(cls, data: dict):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in (data or {}).items() if k in names})


class Backend:
    kind: ClassVar[str]
    label: ClassVar[str]
    conf_class: ClassVar[type[Conf]]
    #: Secret field names of this kind (never rendered back, masked in audit mails).
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, conf, secrets: dict | None = None) -> None:
        self.conf = conf
        self._secrets = dict(secrets or {})

    def __repr__(self) -> str:  # never show secrets
        return f"<{type(self).__name__} {self.describe_conf(self.conf)}>"

    @classmethod
    def from_destination(cls, destination) -> Backend:
        try:
            conf = cls.conf_class.parse(destination.settings)
        except (TypeError, ValueError) as exc:
            raise DestinationError(f"Invalid settings: {exc}", permanent=True) from None
        return cls(conf, destination.secrets)

    @classmethod
    def describe(cls, settings: dict) -> str:
        return cls.describe_conf(cls.conf_class.parse(settings))

    @classmethod
    def describe_conf(cls, conf) -> str:
        return cls.label

    # --- the contract -------------------------------------------------------
    def test(self) -> str:
        """Check that the destination is reachable and writable; return a message."""
        raise NotImplementedError

    def upload(
        self,
        local_path: Path,
        job_slug: str,
        remote_name: str,
        *,
        expected_size: int,
        expected_sha256: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        raise NotImplementedError

    def list(self, job_slug: str) -> list[RemoteFile]:
        raise NotImplementedError

    def delete(self, job_slug: str, name: str) -> None:
        raise NotImplementedError

    def open(self, job_slug: str, name: str) -> BinaryIO:
        """A readable binary stream of a stored file (for downloads and verify)."""
        raise NotImplementedError

    def size(self, job_slug: str, name: str) -> int:
        for remote in self.list(job_slug):
            if remote.name == name:
                return remote.size
        raise DestinationError(f"{name} is not at this destination.", permanent=True)

    def remove_partials(self, job_slug: str) -> int:
        """Delete temporary files a killed worker left behind; return how many."""
        return 0
