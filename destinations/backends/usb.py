"""USB storage: a disk mounted at a fixed mount point, optionally matched by its
filesystem label or UUID.

The danger with USB disks is the empty directory a disk leaves behind when it is
unplugged: writing there fills the root filesystem (RELIABILITY 4). So every session
checks, before anything is written, that:

* the mount point is **really a mount point**: it is listed in ``/proc/self/mountinfo``
  (the last entry for a path wins, as later mounts hide earlier ones) and the device of
  the folder is the device of that entry; where ``/proc`` cannot be read, the folder's
  device must differ from its parent's (``os.path.ismount``);
* when labels or UUIDs are configured, the mounted filesystem has one of them. They are
  read, in this order, from ``/dev/disk/by-label`` and ``/dev/disk/by-uuid`` (udev's
  links: the usual case, and readable by any user), then ``blkid -p -o export DEVICE``
  (probes the device: needs read access to it, i.e. root or the disk group; else
  ``blkid -o export``, which may answer from its cache), then ``lsblk -P -o LABEL,UUID
  DEVICE`` (udev's database). A filesystem that is not on a block device (tmpfs, a
  network share) has no label: configure none for it.

Each session that finds the disk reports it (label, UUID, when) into
``Destination.status``, so the list page shows when each of two rotated disks was last
seen. A full disk fails at once (checked before writing, and ``ENOSPC`` while writing)
as a :class:`PermanentError`, never retried, and leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django import forms
from django.utils.translation import gettext_lazy as _

from destinations.backends.base import Conf, ConfError, DestinationError, PermanentError, TestResult
from destinations.backends.local import LocalBackend, LocalSession, oserror, validate_local_path
from destinations.kindforms import KindForm

MOUNTINFO = "/proc/self/mountinfo"
DISK_BY_LABEL = "/dev/disk/by-label"
DISK_BY_UUID = "/dev/disk/by-uuid"
PROBE_TIMEOUT = 5  # seconds for blkid / lsblk
#: Bytes kept free beyond the file itself when checking space before an upload (the
#: filesystem's own metadata; a disk filled to the last byte is a misery to repair).
FREE_SPACE_MARGIN = 1 << 20

_LABEL_OK = re.compile(r"\A[^\x00-\x1f\x7f,]{1,64}\Z")
_UUID_OK = re.compile(r"\A[0-9A-Fa-f-]{4,36}\Z")


# --- mounts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Mount:
    mount_point: str
    source: str  # "/dev/sdb1", "tmpfs", "" when unknown
    fstype: str
    device: int | None  # st_dev of the mounted filesystem, when known


def _unescape_mountinfo(value: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\040`` and so on."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), value)


def read_mounts(path: str = MOUNTINFO) -> list[Mount] | None:
    """Every mount of this process's namespace, in order; None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    mounts = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        major, _colon, minor = fields[2].partition(":")
        device = os.makedev(int(major), int(minor)) if major.isdigit() and minor.isdigit() else None
        mounts.append(Mount(_unescape_mountinfo(fields[4]), _unescape_mountinfo(tail[1]), tail[0], device))
    return mounts


def mount_at(path: str | Path) -> Mount | None:
    """The filesystem mounted exactly at *path*, or None (nothing is mounted there)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    mounts = read_mounts()
    if mounts is None:  # no /proc: compare the device with the parent's
        if not os.path.ismount(real):
            return None
        return Mount(real, "", "", st.st_dev)
    found = [m for m in mounts if m.mount_point == real]
    if not found:
        return None
    mount = found[-1]  # a later mount at the same place hides the earlier ones
    if mount.device is not None and mount.device != st.st_dev:
        # Listed, but the folder is not on it (a bind mount of the same disk, or the
        # disk went away between the two reads): do not trust it.
        parent = os.stat(os.path.dirname(real) or "/")
        if parent.st_dev == st.st_dev:
            return None
    return mount


# --- labels and UUIDs ----------------------------------------------------------------------
@dataclass(frozen=True)
class DiskIdentity:
    label: str = ""
    uuid: str = ""
    via: str = ""  # where they were read from (shown in test results)


def _same_device(candidate: str, mount: Mount) -> bool:
    try:
        st = os.stat(candidate)
    except OSError:
        return False
    if mount.device is not None and st.st_rdev == mount.device:
        return True
    return bool(mount.source) and os.path.realpath(candidate) == os.path.realpath(mount.source)


def _udev_unescape(name: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def _from_links(directory: str, mount: Mount) -> str:
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return ""
    for entry in entries:
        if _same_device(os.path.join(directory, entry), mount):
            return _udev_unescape(entry)
    return ""


def _run_probe(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _blkid(device: str) -> DiskIdentity | None:
    blkid = shutil.which("blkid")
    if blkid is None:
        return None
    values = {}
    # -p probes the device itself (root, or read access to it); blkid's cache can name
    # the disk that was plugged in before, so it is only the fallback.
    out = _run_probe([blkid, "-p", "-o", "export", device]) or _run_probe([blkid, "-o", "export", device])
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = re.sub(r"\\(.)", r"\1", value)  # blkid escapes like a shell
    if not values.get("LABEL") and not values.get("UUID"):
        return None
    return DiskIdentity(values.get("LABEL", ""), values.get("UUID", ""), "blkid")


def _lsblk(device: str) -> DiskIdentity | None:
    lsblk = shutil.which("lsblk")
    if lsblk is None:
        return None
    out = _run_probe([lsblk, "-P", "-d", "-o", "LABEL,UUID", device])
    values = {k: _udev_unescape(v) for k, v in re.findall(r'(\w+)="([^"]*)"', out)}
    if not values.get("LABEL") and not values.get("UUID"):
        return None
    return DiskIdentity(values.get("LABEL", ""), values.get("UUID", ""), "lsblk")


def disk_identity(mount: Mount) -> DiskIdentity:
    """The label and UUID of the filesystem of *mount* (empty when it has none or they
    cannot be read; see the module docstring for where they come from)."""
    label, uuid = _from_links(DISK_BY_LABEL, mount), _from_links(DISK_BY_UUID, mount)
    if label or uuid:
        return DiskIdentity(label, uuid, "/dev/disk")
    if not mount.source.startswith("/dev/"):
        return DiskIdentity()
    return _blkid(mount.source) or _lsblk(mount.source) or DiskIdentity()


# --- settings -----------------------------------------------------------------------------
def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class UsbConf(Conf):
    #: The mount point itself (not a folder below it): the disk must be mounted there.
    path: str = ""
    #: Filesystem labels, comma separated (two rotated disks: "BACKUP-A, BACKUP-B"); blank: any disk.
    label: str = ""
    #: Filesystem UUIDs, comma separated; blank: any.
    uuid: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/") or "\x00" in self.path:
            raise ConfError("The mount point must be an absolute path (start with /).", "path")
        if not isinstance(self.label, str):
            raise ConfError("The label must be text.", "label")
        if not isinstance(self.uuid, str):
            raise ConfError("The UUID must be text.", "uuid")
        for label in _split(self.label):
            if not _LABEL_OK.match(label):
                raise ConfError("A label has characters that are not allowed (or is longer than 64).", "label")
        for uuid in _split(self.uuid):
            if not _UUID_OK.match(uuid):
                raise ConfError("A UUID is made of hexadecimal digits and dashes (e.g. 1c0be621-35ee-4c2c-…).", "uuid")
        object.__setattr__(self, "label", ", ".join(_split(self.label)))
        object.__setattr__(self, "uuid", ", ".join(u.lower() for u in _split(self.uuid)))

    def validate(self) -> None:
        object.__setattr__(self, "path", validate_local_path(self.path))

    @property
    def labels(self) -> tuple[str, ...]:
        return _split(self.label)

    @property
    def uuids(self) -> tuple[str, ...]:
        return _split(self.uuid)


# --- the backend ----------------------------------------------------------------------------
class UsbSession(LocalSession):
    """A local folder session on a disk that was checked to be mounted (and the right
    one); every upload checks again and checks the free space first."""

    def __init__(self, backend: UsbBackend, base: Path, identity: DiskIdentity, mount: Mount) -> None:
        super().__init__(backend, base)
        self.identity = identity
        self.mount = mount

    def upload(self, local_path, folder, name, *, expected_size, **kwargs):
        self.backend.check_mounted()  # type: ignore[attr-defined]
        free = self.free_space()
        if free is not None and free < expected_size + FREE_SPACE_MARGIN:
            from django.template.defaultfilters import filesizeformat

            raise PermanentError(
                f"The USB disk at {self.base} is full: {name} needs {filesizeformat(expected_size)}, "
                f"{filesizeformat(free)} are free. Nothing was written."
            )
        super().upload(local_path, folder, name, expected_size=expected_size, **kwargs)
        with contextlib.suppress(DestinationError):
            free = self.free_space()
            self.backend.report_status(free_bytes=free, free_checked_at=datetime.now(UTC).isoformat())

    def free_space(self):
        try:
            usage = os.statvfs(self.base)
        except OSError as exc:
            raise oserror(exc, "reading the free space") from None
        return usage.f_bavail * usage.f_frsize


class UsbBackend(LocalBackend):
    kind = "usb"
    label = _("USB storage")
    conf_class = UsbConf
    form_class_path = "destinations.backends.usb.UsbForm"
    help_text = _(
        "A USB disk mounted on this server. Nothing is written unless the disk is really mounted "
        "(and, if given, has the expected label), so an unplugged disk never fills the system disk."
    )

    @classmethod
    def describe_conf(cls, conf: UsbConf) -> str:
        which = []
        if conf.labels:
            which.append(f"label {' or '.join(conf.labels)}")
        if conf.uuids:
            which.append(f"UUID {' or '.join(conf.uuids)}")
        return f"{cls.label}: {conf.path}" + (f" ({'; '.join(which)})" if which else "")

    @classmethod
    def for_directory(cls, path, *, file_mode=None):  # pragma: no cover - not for USB disks
        raise NotImplementedError("USB destinations are configured by administrators only.")

    def check_mounted(self) -> tuple[Mount, DiskIdentity]:
        """The mount at the configured mount point and the disk's identity; raises
        :class:`PermanentError` when nothing (or the wrong disk) is mounted there."""
        path = self.conf.path
        mount = mount_at(path)
        if mount is None:
            raise PermanentError(
                f"No disk is mounted at {path} (is the USB disk plugged in and mounted?). "
                "Nothing was written, so the system disk does not fill up."
            )
        identity = disk_identity(mount)
        wanted_labels = {label.casefold() for label in self.conf.labels}
        wanted_uuids = {uuid.casefold() for uuid in self.conf.uuids}
        if wanted_labels or wanted_uuids:
            if not identity.label and not identity.uuid:
                raise PermanentError(
                    f"The label of the disk mounted at {path} cannot be read (no /dev/disk/by-label entry, "
                    "and blkid/lsblk tell nothing), so it cannot be matched. Nothing was written."
                )
            matches = identity.label.casefold() in wanted_labels or identity.uuid.casefold() in wanted_uuids
            if not matches:
                seen = identity.label or identity.uuid
                wanted = " or ".join([*self.conf.labels, *self.conf.uuids])
                raise PermanentError(f"The disk mounted at {path} is “{seen}”, not {wanted}. Nothing was written.")
        return mount, identity

    def session(self) -> UsbSession:
        mount, identity = self.check_mounted()
        self._seen = (mount, identity)
        name = identity.label or identity.uuid or mount.source or "disk"
        now = datetime.now(UTC).isoformat()
        self.report_status(usb_label=identity.label, usb_uuid=identity.uuid, usb_seen_at=now, usb_disks={name: now})
        return UsbSession(self, Path(mount.mount_point), identity, mount)

    def test(self) -> TestResult:
        self._seen = None
        result = super().test()
        if self._seen is not None:
            mount, identity = self._seen
            result.details.append(("Mounted", f"{mount.source or '?'} ({mount.fstype or 'unknown type'})"))
            if identity.label or identity.uuid:
                result.details.append(("Label", identity.label or "(none)"))
                result.details.append(("UUID", identity.uuid or "(none)"))
                result.details.append(("Read with", identity.via))
            else:
                result.details.append(("Label", "(this filesystem has no label)"))
        return result

    @classmethod
    def status_facts(cls, status: dict) -> list[str]:
        facts = super().status_facts(status)
        disks = status.get("usb_disks") or {}
        if not isinstance(disks, dict):
            return facts
        from django.utils.dateparse import parse_datetime
        from django.utils.timesince import timesince

        seen = []
        for name, when in disks.items():
            stamp = parse_datetime(when) if isinstance(when, str) else None
            if stamp is not None:
                seen.append((stamp, str(name)))
        for stamp, name in sorted(seen, reverse=True)[:4]:
            facts.append(_("USB disk “%(name)s” last seen %(ago)s ago") % {"name": name, "ago": timesince(stamp)})
        return facts


class UsbForm(KindForm):
    backend_class = UsbBackend

    path = forms.CharField(
        label=_("Mount point"),
        max_length=500,
        help_text=_(
            "Where the disk is mounted, e.g. /media/backup-disk (inside an allowed folder: "
            "BACKUPSITE_LOCAL_ROOTS). Backups go to the folder backupsite/ on the disk, one sub-folder per job."
        ),
    )
    label = forms.CharField(
        label=_("Filesystem label"),
        max_length=200,
        required=False,
        help_text=_(
            "Only write to a disk with this label; for disks used in turn, separate their labels with commas "
            "(BACKUP-A, BACKUP-B). Blank: any disk mounted there."
        ),
    )
    uuid = forms.CharField(
        label=_("Filesystem UUID"),
        max_length=400,
        required=False,
        help_text=_("Or match the filesystem's UUID (as shown by lsblk -f); several separated by commas."),
    )


__all__ = ["DiskIdentity", "Mount", "UsbBackend", "UsbConf", "UsbForm", "disk_identity", "mount_at", "read_mounts"]
