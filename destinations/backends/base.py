"""The contract every destination kind implements.

A kind is one module (or package) with its backend, its typed ``Conf`` and its form,
registered in ``destinations.backends.REGISTRY``. Everything else in backupsite talks to
destinations only through this contract:

* :meth:`Backend.session` opens **one session** (connect and log in once) for a sequence
  of operations: ``upload``, ``upload_files``, ``list``, ``stat``, ``delete``, ``open``,
  ``free_space``, ``remove_partials``. ``with backend.session() as s: ...``
* Errors are **typed**: :class:`TransientError` (timeouts, resets: retrying may help),
  :class:`PermanentError` (credentials, host key, quota, disk full, configuration) and
  :class:`NotFoundError`. All are :class:`DestinationError`; messages are shown to users,
  so they are readable and never contain a secret or a server's banner.
* :meth:`Backend.test` returns a :class:`TestResult` (what it learned: fingerprints,
  free space, the remote folder, a throughput sample); it writes a probe file, reads it
  back and deletes it, so "test passes, backup fails" cannot happen for lack of rights.
* ``folder`` is generic: a path *relative to the destination's base path*, made of plain
  name components (``""`` is the base path itself). Backups go to
  :func:`job_folder` = ``backupsite/<job slug>``; a planning export may write straight
  into the base path the customer gave.
* Every write goes to a temporary name and is renamed (or committed) only once its size
  (and a checksum where the service offers one) matched; ``replace=True`` swaps an
  existing file as atomically as the protocol allows (the old file stays until the new
  one is complete).
* Each kind declares its :attr:`Backend.capabilities`: the e-mail kind is write-only, so
  verify, drills, retention and downloads skip it and say so instead of failing.

Kinds that look like a file system (local folder, USB, SFTP, FTP, SMB) implement a few
primitives of :class:`FileTreeSession`, which does the temporary-name / size-check /
rename / replace dance the same way for all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import re
import secrets as _secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from django.utils.translation import gettext_lazy

from jobs.engine.archive import Cancelled

ProgressCallback = Callable[[int], None]
CancelCheck = Callable[[], bool]
ROOT_FOLDER = "backupsite"
PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
PROBE_PREFIX = "backupsite-connection-test-"
PROBE_SIZE = 1 << 20  # bytes written (and read back) by test()
COPY_CHUNK = 1 << 20

# Capabilities a kind may declare.
LIST = "list"
READ = "read"  # open(): read back (downloads, verify, drills)
DELETE = "delete"  # retention
FREE_SPACE = "free_space"
REPLACE = "replace"  # upload(replace=True): the planning export
ALL_CAPABILITIES = frozenset({LIST, READ, DELETE, FREE_SPACE, REPLACE})
CAPABILITY_LABELS = {
    LIST: gettext_lazy("list files"),
    READ: gettext_lazy("read files back"),
    DELETE: gettext_lazy("delete old backups"),
    FREE_SPACE: gettext_lazy("report free space"),
    REPLACE: gettext_lazy("replace files"),
}


# --- errors ------------------------------------------------------------------------
class DestinationError(Exception):
    """A destination failed. The message is shown to users: readable, never a secret.

    ``permanent`` says whether retrying cannot help. Use the subclasses.
    """

    permanent: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TransientError(DestinationError):
    """Timeouts, connection resets, a server that is busy: retrying may help."""


class PermanentError(DestinationError):
    """Bad credentials, a changed host key, quota or disk full, bad configuration:
    retrying will not help until someone changes something."""

    permanent = True


class NotFoundError(PermanentError):
    """The file or folder is not at the destination."""


class UnsupportedError(PermanentError):
    """The kind cannot do this (e.g. read back from an e-mail destination)."""


class FingerprintError(PermanentError):
    """The server's identity (SSH host key, TLS certificate) is not the confirmed one,
    or has not been confirmed yet. Carries the :class:`Fingerprint` that was seen, so
    the test page can show it for confirmation."""

    def __init__(self, message: str, fingerprint: Fingerprint) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


# --- values --------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    modified: float | None = None  # POSIX timestamp, if the destination reports one


@dataclass(frozen=True)
class UploadItem:
    """One file of :meth:`Session.upload_files`."""

    local_path: Path
    name: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class Fingerprint:
    """A server identity to pin: an SSH host key or a TLS certificate.

    ``value`` is what administrators compare (``SHA256:…`` as ``ssh-keygen -l`` prints
    it, or the certificate's SHA-256 in hex pairs); ``setting`` names the kind's
    ``Conf`` field that stores the confirmed value.
    """

    kind: str  # "ssh-host-key" | "tls-certificate"
    value: str
    setting: str
    description: str = ""  # "ssh-ed25519", "CN=backup.example.net, issued by …"
    trusted: bool = False  # pinned and matching, or verified through the system store

    @property
    def label(self) -> str:
        return {"ssh-host-key": "SSH host key", "tls-certificate": "TLS certificate"}.get(self.kind, self.kind)


@dataclass
class TestResult:
    """What :meth:`Backend.test` found out. ``ok`` means a probe file was written (and,
    where the kind can, read back and deleted); ``message`` is one readable sentence."""

    __test__ = False  # not a pytest test class

    ok: bool
    message: str
    remote_folder: str = ""
    free_bytes: int | None = None
    throughput: float | None = None  # bytes per second of the probe upload
    fingerprint: Fingerprint | None = None
    details: list[tuple[str, str]] = field(default_factory=list)  # further facts: (label, value)
    duration: float | None = None

    @property
    def needs_confirmation(self) -> bool:
        return self.fingerprint is not None and not self.fingerprint.trusted

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["details"] = [list(d) for d in self.details]
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> TestResult | None:
        if not data:
            return None
        data = dict(data)
        fp = data.pop("fingerprint", None)
        details = [tuple(d) for d in data.pop("details", []) or []]
        names = {f.name for f in dataclasses.fields(cls)}
        result = cls(**{k: v for k, v in data.items() if k in names}, details=details)
        if fp:
            result.fingerprint = Fingerprint(**fp)
        return result


# --- names -----------------------------------------------------------------------------
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\/]")


def check_name(name: str, *, hidden_ok: bool = False) -> str:
    """A single file name: not empty, no ``/`` or ``\\``, no control characters, not
    ``.`` or ``..``, not hidden (unless *hidden_ok*: temporary and probe files)."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise PermanentError("Invalid file name.")
    if _BAD_CHARS.search(name) or len(name.encode()) > 255:
        raise PermanentError("Invalid file name.")
    if name.startswith(".") and not hidden_ok:
        raise PermanentError("Invalid file name (hidden files are not written or read).")
    return name


def check_folder(folder: str) -> str:
    """A folder relative to the base path: ``""`` or plain names joined by ``/``."""
    if folder in ("", None):
        return ""
    if not isinstance(folder, str):
        raise PermanentError("Invalid folder name.")
    parts = folder.split("/")
    for part in parts:
        if not part or part in (".", "..") or part.startswith(".") or _BAD_CHARS.search(part):
            raise PermanentError("Invalid folder name.")
    return folder


def check_slug(slug: str) -> str:
    """A job's (or export's) slug used as a folder name (``backupsite.slugs``: the one
    check every place that builds a path from a slug calls)."""
    from backupsite.slugs import UnsafeFolderName, safe_folder_name

    try:
        return safe_folder_name(slug, "job folder name")
    except UnsafeFolderName as exc:
        raise PermanentError(str(exc)) from None


def check_local_size(item: UploadItem) -> None:
    """The local copy of *item* is there and has the size it should have (before a
    kind that sends it by other means starts)."""
    try:
        actual = item.local_path.stat().st_size
    except OSError as exc:
        raise PermanentError(f"The local copy of {item.name} cannot be read ({exc.strerror}).") from None
    if actual != item.size:
        raise PermanentError(f"The local copy of {item.name} has {actual} bytes instead of {item.size}.")


def check_read(reader: HashingReader, name: str, expected_size: int, expected_sha256: str | None) -> None:
    """What *reader* read of the local copy of *name* has the expected size and (if
    known) checksum: only then is the upload committed."""
    if reader.size != expected_size:
        raise PermanentError(f"The local copy of {name} has {reader.size} bytes instead of {expected_size}.")
    if expected_sha256 and reader.sha256 != expected_sha256:
        raise PermanentError(f"The local copy of {name} does not match its checksum.")


def already_exists(name: str) -> PermanentError:
    """The error of an upload without ``replace`` to a name that is taken."""
    return PermanentError(f"{name} already exists at the destination; it was not overwritten.")


def job_folder(job_slug: str) -> str:
    """Where a job's backups go at every destination: ``backupsite/<job slug>``."""
    return f"{ROOT_FOLDER}/{check_slug(job_slug)}"


def partial_name(name: str) -> str:
    return f".{name}{PARTIAL_SUFFIX}"


def is_partial(name: str) -> bool:
    return name.startswith(".") and (name.endswith(PARTIAL_SUFFIX) or name.endswith(OLD_SUFFIX))


# --- typed settings ---------------------------------------------------------------------
class ConfError(ValueError):
    """A setting is invalid. ``field`` names it (forms show the error next to it)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conf:
    """Base for a kind's typed, validated settings: a frozen dataclass.

    :meth:`parse` is strict: unknown keys are an error, not silently dropped; missing
    keys take the dataclass defaults; subclasses validate (and normalise) in
    ``__post_init__``, raising :class:`ConfError` with the field's name.
    """

    @classmethod
    def parse(cls, data: dict | None, *, policy: bool = True):
        """Settings as stored on a Destination row (or typed into its form): strict,
        then :meth:`validate` (unless *policy* is false: describing a stored row needs no
        policy checks, which may touch the disk). Code that builds a Conf directly skips
        ``validate``."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfError(f"Unknown setting(s): {', '.join(unknown)}.")
        try:
            conf = cls(**data)
        except TypeError as exc:
            raise ConfError(f"Invalid settings ({exc}).") from None
        if policy:
            conf.validate()
        return conf

    def validate(self) -> None:
        """Policy checks for settings that come from users (allowed roots, ...);
        ``__post_init__`` holds the checks that always apply."""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


# --- sessions ------------------------------------------------------------------------
class Session:
    """An open connection to one destination (logged in once). Use as a context
    manager, or call :meth:`close`. Kinds override the operations they support."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Log out and disconnect; never raises."""

    # --- writing -----------------------------------------------------------------
    def upload(
        self,
        local_path: Path,
        folder: str,
        name: str,
        *,
        expected_size: int,
        expected_sha256: str | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        replace: bool = False,
    ) -> None:
        """Store *local_path* as ``<folder>/<name>``, under a temporary name first;
        committed only once *expected_size* (and *expected_sha256* where the service
        offers a checksum) matched. Without *replace*, an existing file of that name is
        an error (:class:`PermanentError`); with it, the old file is replaced once the
        new one is complete. *progress* gets the bytes sent so far; *cancel* is polled
        between chunks (raise :class:`~jobs.engine.archive.Cancelled`).

        Checks *folder* and *name*, then hands over to :meth:`_upload`, which kinds
        implement."""
        check_folder(folder)
        check_name(name)
        self._upload(
            UploadItem(Path(local_path), name, expected_size, expected_sha256),
            folder,
            progress=progress,
            cancel=cancel,
            replace=replace,
        )

    def _upload(
        self,
        item: UploadItem,
        folder: str,
        *,
        progress: ProgressCallback | None,
        cancel: CancelCheck | None,
        replace: bool,
    ) -> None:
        """Store *item* in the (already checked) *folder*: what :meth:`upload` promises."""
        raise UnsupportedError(f"{self.backend.label} destinations cannot store files.")

    def upload_files(
        self,
        folder: str,
        items: Iterable[UploadItem],
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        replace: bool = False,
    ) -> None:
        """Upload several files in order (a backup: archive, then manifest). Kinds that
        deliver one message per backup (e-mail) override this. *progress* gets the
        bytes sent so far over all items."""
        base = 0
        for item in items:
            offset = base
            self.upload(
                item.local_path,
                folder,
                item.name,
                expected_size=item.size,
                expected_sha256=item.sha256,
                progress=(lambda done, offset=offset: progress(offset + done)) if progress else None,
                cancel=cancel,
                replace=replace,
            )
            base += item.size

    def delete(self, folder: str, name: str) -> None:
        """Delete ``<folder>/<name>``; a missing file is not an error."""
        raise UnsupportedError(f"{self.backend.label} destinations cannot delete files.")

    def remove_partials(self, folder: str) -> list[str]:
        """Delete temporary files a killed worker left in *folder*; return their names."""
        return []

    # --- reading -----------------------------------------------------------------
    def list(self, folder: str) -> list[RemoteFile]:
        """The regular, non-hidden files directly in *folder* (``[]`` if it is missing)."""
        raise UnsupportedError(f"{self.backend.label} destinations cannot list files.")

    def stat(self, folder: str, name: str) -> RemoteFile:
        """``<folder>/<name>``, or :class:`NotFoundError`."""
        check_name(name)
        for remote in self.list(folder):
            if remote.name == name:
                return remote
        raise NotFoundError(f"{name} is not at this destination.")

    def open(self, folder: str, name: str, offset: int = 0) -> BinaryIO:
        """A streaming, readable binary file object of ``<folder>/<name>`` starting at
        *offset* (Range requests). Valid while the session is open."""
        raise UnsupportedError(f"{self.backend.label} destinations cannot be read back.")

    def free_space(self) -> int | None:
        """Free bytes at the destination, where the protocol tells; else None."""
        return None

    def describe_folder(self, folder: str) -> str:
        """Where ``folder`` is, for people: ``sftp://host/path/backupsite/job``."""
        return self.backend.describe_folder(folder)


class _StreamOwningSession:
    """A file object that closes its session when it is closed (:meth:`Backend.open`)."""

    def __init__(self, stream: BinaryIO, session: Session) -> None:
        self._stream = stream
        self._session = session

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    def readinto(self, buffer) -> int:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return readinto(buffer)
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._session.close()

    @property
    def closed(self) -> bool:
        return bool(getattr(self._stream, "closed", False))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        while chunk := self.read(COPY_CHUNK):
            yield chunk


#: Public name of the wrapper, for callers that open a session themselves (a download
#: looks the file's size up and then streams it in the same session).
StreamOwningSession = _StreamOwningSession


class Backend:
    """One kind of destination, configured from a Destination row at run time."""

    kind: ClassVar[str]
    label: ClassVar[str]
    conf_class: ClassVar[type[Conf]]
    #: Secret field names of this kind (never rendered back, masked in pages, logs and e-mails).
    secret_fields: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[frozenset[str]] = ALL_CAPABILITIES
    #: Dotted path of the kind's form class (``destinations.forms.KindForm`` subclass).
    form_class_path: ClassVar[str] = ""
    #: A short description shown when choosing the kind.
    help_text: ClassVar[str] = ""

    #: Receives the facts a session learned about the destination (:meth:`report_status`).
    #: ``Destination.backend()`` sets it, so they land in ``Destination.status``; a backend
    #: built from a form (the test before saving) has none and the facts are dropped.
    status_listener: Callable[[dict], None] | None = None

    def __init__(self, conf, secrets: dict | None = None) -> None:
        self.conf = conf
        self._secrets = dict(secrets or {})

    def __repr__(self) -> str:  # never show secrets
        return f"<{type(self).__name__} {self.describe_conf(self.conf)}>"

    @classmethod
    def from_settings(cls, settings: dict | None, secrets: dict | None = None) -> Backend:
        try:
            conf = cls.conf_class.parse(settings)
        except ValueError as exc:
            raise PermanentError(f"Invalid settings: {exc}") from None
        return cls(conf, secrets)

    @classmethod
    def from_destination(cls, destination) -> Backend:
        return cls.from_settings(destination.settings, destination.secrets)

    @classmethod
    def form_class(cls):
        from django.utils.module_loading import import_string

        return import_string(cls.form_class_path)

    @classmethod
    def describe(cls, settings: dict) -> str:
        """Words for pages (a list shows a hundred): the stored settings, strictly parsed
        but without the policy checks (they ran when the settings were saved, and run
        again before any use)."""
        return cls.describe_conf(cls.conf_class.parse(settings, policy=False))

    @classmethod
    def describe_conf(cls, conf) -> str:
        return cls.label

    def describe_folder(self, folder: str) -> str:
        return f"{self.describe_conf(self.conf)} → {folder or '(base folder)'}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    # --- what the list page shows --------------------------------------------------
    def report_status(self, **facts: Any) -> None:
        """Record what a session learned (JSON values: a USB disk's label and when it was
        seen, free space) in the destination's ``status``; dict values are merged key by
        key. Never raises: a fact that cannot be stored must not fail an upload."""
        if self.status_listener is None:
            return
        try:
            self.status_listener(facts)
        except Exception:  # noqa: BLE001 - status is informative only
            logging.getLogger(__name__).warning("Could not record the status of a %s destination.", self.kind)

    @classmethod
    def status_facts(cls, status: dict) -> list[str]:
        """Readable lines for the list and detail pages from ``Destination.status``
        (kinds add their own: a USB disk last seen ...)."""
        from django.template.defaultfilters import filesizeformat
        from django.utils.dateparse import parse_datetime
        from django.utils.timesince import timesince
        from django.utils.translation import gettext as _

        facts = []
        free = (status or {}).get("free_bytes")
        if isinstance(free, int) and not isinstance(free, bool):
            checked = parse_datetime(str(status.get("free_checked_at") or ""))
            if checked is not None:
                facts.append(
                    _("%(free)s free (%(ago)s ago)") % {"free": filesizeformat(free), "ago": timesince(checked)}
                )
            else:
                facts.append(_("%(free)s free") % {"free": filesizeformat(free)})
        return facts

    def size_limit(self) -> int | None:
        """The largest archive, in bytes, this destination takes (an e-mail kind's
        attachment limit), or None when it has no such limit. The wizard warns before a
        job is saved whose content measures more; uploads still refuse by themselves."""
        return None

    @property
    def timeout(self) -> float:
        """Seconds for every network step (connect, banner, auth, each read/write)."""
        from django.conf import settings

        return float(getattr(self.conf, "timeout", None) or settings.BACKUPSITE_DESTINATION_TIMEOUT)

    # --- the contract ---------------------------------------------------------------
    def session(self) -> Session:
        """Connect and log in once; the returned session is a context manager."""
        raise NotImplementedError

    def test(self) -> TestResult:
        """Connect, write a probe file under ``backupsite/``, read it back, delete it,
        measure the throughput; report what was learned. Never raises for destination
        problems: a failed test is a result with ``ok=False`` and a readable message."""
        started = time.monotonic()
        folder = ROOT_FOLDER
        try:
            with self.session() as session:
                result = self._probe(session, folder)
                result.fingerprint = result.fingerprint or self.fingerprint_of(session)
        except FingerprintError as exc:
            return TestResult(
                ok=False, message=exc.message, fingerprint=exc.fingerprint, duration=time.monotonic() - started
            )
        except DestinationError as exc:
            return TestResult(ok=False, message=exc.message, duration=time.monotonic() - started)
        result.duration = time.monotonic() - started
        return result

    def fingerprint_of(self, session: Session) -> Fingerprint | None:
        """The server identity the session saw (kinds with host keys or certificates)."""
        return getattr(session, "fingerprint", None)

    def _probe(self, session: Session, folder: str) -> TestResult:
        data = os.urandom(PROBE_SIZE)
        digest = hashlib.sha256(data).hexdigest()
        name = f"{PROBE_PREFIX}{_secrets.token_hex(6)}.tmp"
        facts: list[str] = []
        with tempfile.NamedTemporaryFile(prefix="backupsite-probe-") as tmp:
            tmp.write(data)
            tmp.flush()
            started = time.monotonic()
            session.upload(Path(tmp.name), folder, name, expected_size=len(data), expected_sha256=digest)
            elapsed = max(time.monotonic() - started, 1e-6)
        facts.append("a test file was written")
        try:
            if self.can(READ):
                with session.open(folder, name) as fh:
                    back = _read_all(fh, len(data) + 1)
                if back != data:
                    raise PermanentError("The test file read back differs from what was written.")
                facts.append("read back")
        finally:
            if self.can(DELETE):
                with contextlib.suppress(DestinationError):
                    session.delete(folder, name)
        if self.can(DELETE):
            facts.append("deleted")
        free = session.free_space() if self.can(FREE_SPACE) else None
        message = "Connected; " + ", ".join(facts) + "."
        return TestResult(
            ok=True,
            message=message,
            remote_folder=session.describe_folder(folder),
            free_bytes=free,
            throughput=len(data) / elapsed,
        )

    # --- conveniences: one operation, one session -----------------------------------
    def upload(self, local_path: Path, folder: str, name: str, **kwargs) -> None:
        with self.session() as session:
            session.upload(local_path, folder, name, **kwargs)

    def list(self, folder: str) -> list[RemoteFile]:
        with self.session() as session:
            return session.list(folder)

    def delete(self, folder: str, name: str) -> None:
        with self.session() as session:
            session.delete(folder, name)

    def open(self, folder: str, name: str, offset: int = 0) -> BinaryIO:
        """A stream that owns its own session (closed together): downloads, verify."""
        session = self.session()
        try:
            stream = session.open(folder, name, offset)
        except BaseException:
            session.close()
            raise
        return _StreamOwningSession(stream, session)  # type: ignore[return-value]


def _read_all(fh: BinaryIO, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = fh.read(min(COPY_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


# --- file-system-like kinds -------------------------------------------------------------
class FileTreeSession(Session):
    """Kinds that look like a file system implement the primitives below; this class
    does the rest the same way for all of them: partial names, the size check, the
    rename (or the replace dance where the protocol cannot rename over a file),
    listing only regular, non-hidden files, cleaning up after killed workers.

    Paths given to the primitives are full remote paths (``self.path(folder, name)``).
    """

    #: Whether ``_rename(src, dst)`` atomically replaces an existing *dst*.
    rename_replaces: ClassVar[bool] = False

    # --- primitives (kinds implement these) ---------------------------------------
    def path(self, folder: str, name: str | None = None) -> str:
        """The remote path of *folder* (and *name* in it) under the base path."""
        raise NotImplementedError

    def _makedirs(self, folder_path: str) -> None:
        raise NotImplementedError

    def _write(self, source: HashingReader, remote_path: str) -> None:
        """Stream *source* (a readable file object: ``read``/``readinto``; it hashes,
        counts, reports progress and polls for cancellation as it is read) into the new
        file *remote_path*. A kind that sends the file by other means (an external
        program reading ``source.path``) calls ``source.finish()`` afterwards, which
        reads the rest of the file for the checksum."""
        raise NotImplementedError

    def _size(self, remote_path: str) -> int | None:
        """The size of a regular file, or None when there is none at that path."""
        raise NotImplementedError

    def _rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def _remove(self, remote_path: str) -> None:
        """Remove a file; a missing one is not an error."""
        raise NotImplementedError

    def _listdir(self, folder_path: str) -> list[RemoteFile]:
        """Regular files (hidden ones included) in the folder; [] if it is missing."""
        raise NotImplementedError

    def _open(self, remote_path: str, offset: int) -> BinaryIO:
        raise NotImplementedError

    # --- the operations, built on the primitives ------------------------------------
    def _upload(self, item, folder, *, progress, cancel, replace):
        name, expected_size = item.name, item.size
        final = self.path(folder, name)
        tmp = self.path(folder, partial_name(name))
        self._makedirs(self.path(folder))
        existing = self._size(final)
        if existing is not None and not replace:
            raise already_exists(name)
        self._remove(tmp)
        try:
            with HashingReader(item.local_path, progress=progress, cancel=cancel) as source:
                self._write(source, tmp)
                source.finish()
            check_read(source, name, expected_size, item.sha256)
            size = self._size(tmp)
            if size != expected_size:
                raise TransientError(
                    f"Size mismatch after uploading {name}: {size} bytes arrived instead of {expected_size}."
                )
            if existing is None or self.rename_replaces:
                self._rename(tmp, final)
            else:
                # The protocol cannot rename over a file: keep the old one until the new
                # one is complete, then swap, then drop the old one.
                old = self.path(folder, f".{name}{OLD_SUFFIX}")
                self._remove(old)
                self._rename(final, old)
                try:
                    self._rename(tmp, final)
                except BaseException:
                    with contextlib.suppress(Exception):
                        self._rename(old, final)
                    raise
                self._remove(old)
        except BaseException:
            with contextlib.suppress(Exception):
                self._remove(tmp)
            raise

    def list(self, folder):
        check_folder(folder)
        return [f for f in self._listdir(self.path(folder)) if not f.name.startswith(".")]

    def stat(self, folder, name):
        check_folder(folder)
        check_name(name)
        size = self._size(self.path(folder, name))
        if size is None:
            raise NotFoundError(f"{name} is not at this destination.")
        for remote in self._listdir(self.path(folder)):
            if remote.name == name:
                return remote
        return RemoteFile(name, size)

    def delete(self, folder, name):
        check_folder(folder)
        check_name(name)
        self._remove(self.path(folder, name))

    def open(self, folder, name, offset=0):
        check_folder(folder)
        check_name(name)
        if offset < 0:
            raise PermanentError("Invalid offset.")
        return self._open(self.path(folder, name), offset)

    def remove_partials(self, folder):
        check_folder(folder)
        removed = []
        for remote in self._listdir(self.path(folder)):
            if is_partial(remote.name):
                self._remove(self.path(folder, remote.name))
                removed.append(remote.name)
        return removed


class HashingReader:
    """Reads a local file for an upload: counts and hashes what is read, reports
    progress and polls *cancel* (raising :class:`Cancelled`) as it goes."""

    def __init__(self, path: Path, *, progress: ProgressCallback | None = None, cancel: CancelCheck | None = None):
        self.path = Path(path)
        self.progress = progress
        self.cancel = cancel
        self.size = 0
        self._digest = hashlib.sha256()
        self._fh: BinaryIO | None = None

    def __enter__(self) -> HashingReader:
        self._fh = open(self.path, "rb")
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()

    def _account(self, data) -> None:
        if not data:
            return
        self._digest.update(data)
        self.size += len(data)
        if self.progress:
            self.progress(self.size)
        if self.cancel is not None and self.cancel():  # a cheap check (an Event), polled per chunk
            raise Cancelled()

    def read(self, n: int = -1) -> bytes:
        assert self._fh is not None
        data = self._fh.read(COPY_CHUNK if n is None or n < 0 else n)
        self._account(data)
        return data

    def readinto(self, buffer) -> int:
        assert self._fh is not None
        n = self._fh.readinto(buffer)
        if n:
            self._account(memoryview(buffer)[:n])
        return n or 0

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        """Hash whatever was not read yet (the bytes were sent by another program)."""
        while self.read(COPY_CHUNK):
            pass

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def copy_stream(
    src: BinaryIO,
    write: Callable[[memoryview], Any],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    chunk: int = COPY_CHUNK,
) -> int:
    """Copy *src* to *write* in chunks through one reused buffer, reporting progress and
    polling *cancel* between chunks. Returns the bytes copied."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    done = 0
    while n := src.readinto(buf):
        write(view[:n])
        done += n
        if progress:
            progress(done)
        if cancel is not None and cancel():
            raise Cancelled()
    return done


@contextlib.contextmanager
def mapped_errors(what: str, mapper: Callable[[BaseException], DestinationError | None]) -> Iterator[None]:
    """Turn a library's exceptions into typed :class:`DestinationError` with *mapper*
    (which returns None for exceptions it does not know: those propagate)."""
    try:
        yield
    except DestinationError:
        raise
    except Cancelled:
        raise
    except Exception as exc:
        mapped = mapper(exc)
        if mapped is None:
            raise
        raise mapped from None


class MappedStream(io.RawIOBase):
    """A download's body from a client library (``read(n)``, ``close()``) as a readable
    file object whose errors are typed destination errors (*map_error*, as for
    :func:`mapped_errors`). Kinds whose body needs more override :meth:`_read` or
    :meth:`_close_body`."""

    what = "reading"  # for the error messages

    def __init__(self, body, map_error) -> None:
        super().__init__()
        self._body = body
        self._map = map_error

    def readable(self) -> bool:
        return True

    def _read(self, n: int | None) -> bytes:
        return self._body.read(n)

    def _close_body(self) -> None:
        self._body.close()

    def read(self, n: int = -1) -> bytes:
        with mapped_errors(self.what, self._map):
            return self._read(None if n is None or n < 0 else n)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._close_body()
        super().close()


__all__ = [
    "ALL_CAPABILITIES",
    "DELETE",
    "FREE_SPACE",
    "LIST",
    "READ",
    "REPLACE",
    "ROOT_FOLDER",
    "Backend",
    "Cancelled",
    "Conf",
    "ConfError",
    "DestinationError",
    "FileTreeSession",
    "Fingerprint",
    "FingerprintError",
    "HashingReader",
    "MappedStream",
    "NotFoundError",
    "PermanentError",
    "RemoteFile",
    "Session",
    "StreamOwningSession",
    "TestResult",
    "TransientError",
    "UnsupportedError",
    "UploadItem",
    "already_exists",
    "check_folder",
    "check_local_size",
    "check_name",
    "check_read",
    "check_slug",
    "copy_stream",
    "job_folder",
    "mapped_errors",
]
