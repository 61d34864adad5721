"""The bulk of a key login's upload through OpenSSH's own ``sftp`` client.

Why
---
Python pays per SSH packet (the server grants 32 KiB channel packets, so a 500 MB file is
~16,000 of them, each built, encrypted and sent by paramiko in Python), and the client
shares a small machine with everything else. OpenSSH's client does the same in C and
can use AES-GCM with the CPU's AES instructions; ``bench/destinations.py`` measures both
in the same run (see the README's figures). Password logins cannot use it: ``sftp -b``
forces batch mode, which never asks for a password (and a password must not go on a
command line or into a file), so those stay with paramiko, as do the test button,
listing, deleting and reading back.

How, safely
-----------
* The paramiko session is already logged in and has checked the server's host key
  against the pinned fingerprint. That very key is written to a one-off
  ``known_hosts`` (under a fixed alias, ``HostKeyAlias``) with
  ``StrictHostKeyChecking=yes`` and ``HostKeyAlgorithms`` limited to its type: the
  OpenSSH client accepts that key and no other, and never asks.
* The private key is written, without its passphrase, to a 0600 file in a 0700
  directory (in ``/dev/shm`` where there is one, so it stays in memory). It is deleted
  as soon as the client has logged in (the file appears at the server), and the
  directory in a ``finally`` whatever happens; what a SIGKILLed worker left is swept
  by the next upload. The key never goes on a command line or into the environment.
* ``-F /dev/null`` (no user or system ssh_config), ``IdentitiesOnly`` and
  ``IdentityAgent=none`` (only this key), no password or keyboard-interactive login,
  ``ControlMaster=no``, no proxies. The client connects to the address that
  :mod:`destinations.netguard` checked, never to the name again.
* The file goes to the partial name; backupsite's session then checks the size and
  renames it, exactly as for a paramiko upload. Progress comes from the partial's size
  on the server (polled through the paramiko session, which is idle meanwhile); the
  local file is hashed as the upload proceeds; ``cancel`` and a stalled upload kill
  the client.
* The client gets a parent-death signal: a killed worker does not leave it running.

No Django here (the bench uses it too).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HOST_ALIAS = "backupsite-destination"
POLL_SECONDS = 0.25
#: The client's ciphers: AES-GCM first (hardware AES), then OpenSSH's defaults.
CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"

try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _PRCTL = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def find_client() -> str | None:
    """The OpenSSH ``sftp`` client, if installed."""
    return shutil.which("sftp")


class ClientFailed(Exception):
    """The client exited with an error. ``started`` says whether it got as far as writing
    (then the upload is not tried again another way); ``detail`` is its last error line
    (for logs only: it may quote the server)."""

    def __init__(self, returncode: int, detail: str, *, started: bool) -> None:
        super().__init__(f"sftp exited with status {returncode}")
        self.returncode = returncode
        self.detail = detail
        self.started = started


class Stalled(Exception):
    """Nothing arrived at the server for the timeout."""


@dataclass
class Login:
    """Where and as whom (the paramiko session's checked values)."""

    address: str
    port: int
    user: str
    host_key_type: str  # the algorithm the paramiko session agreed, e.g. "ssh-ed25519"
    host_key_line: str  # "<key type> <base64>"
    private_key: bytes  # OpenSSH format, unencrypted: only ever written to the 0600 file


#: Where the key file goes: memory (tmpfs) where there is one, else the temp dir.
SHM = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private 0700 directory in it


DIR_PREFIX = "backupsite-sftp-"


def _secret_base() -> str | None:
    return str(SHM) if SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK) else None


def _secret_dir() -> Path:
    _sweep_stale()
    path = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=_secret_base()))
    (path / "pid").write_text(str(os.getpid()))
    return path


def _sweep_stale() -> None:
    """Remove what a killed worker left (its ``finally`` never ran): directories of ours
    whose process is gone."""
    for base in {_secret_base() or tempfile.gettempdir(), tempfile.gettempdir()}:
        for path in Path(base).glob(f"{DIR_PREFIX}*"):
            try:
                if path.stat().st_uid != os.geteuid():
                    continue
                pid = int((path / "pid").read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            if pid == os.getpid() or _alive(pid):
                continue
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def quote_batch(value: str) -> str:
    """An argument of an sftp batch command: double quotes, ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def host_key_algorithms(key_type: str) -> str:
    if key_type in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"):
        return "rsa-sha2-512,rsa-sha2-256"
    return key_type


def command(client: str, login: Login, workdir: Path, timeout: float) -> list[str]:
    destination = f"[{login.address}]" if ":" in login.address else login.address
    alive = max(1, int(timeout // 3) or 1)
    options = {
        "BatchMode": "yes",
        "User": login.user,
        "Port": str(login.port),
        "UserKnownHostsFile": str(workdir / "known_hosts"),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "HostKeyAlias": HOST_ALIAS,
        "HostKeyAlgorithms": host_key_algorithms(login.host_key_type),
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "IdentityFile": str(workdir / "key"),
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "HostbasedAuthentication": "no",
        "GSSAPIAuthentication": "no",
        "ControlMaster": "no",
        "ControlPath": "none",
        "ProxyCommand": "none",
        "ProxyJump": "none",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "Compression": "no",
        "Ciphers": CIPHERS,
        "ConnectTimeout": str(max(1, int(timeout))),
        "ServerAliveInterval": str(alive),
        "ServerAliveCountMax": "3",
        "LogLevel": "ERROR",
    }
    args = [client, "-q", "-F", "/dev/null", "-b", str(workdir / "batch")]
    for name, value in options.items():
        args += ["-o", f"{name}={value}"]
    return [*args, destination]


def upload(
    login: Login,
    local_path: Path,
    remote_path: str,
    *,
    timeout: float,
    remote_size: Callable[[], int | None],
    on_progress: Callable[[int], None],
    client: str | None = None,
) -> None:
    """Copy *local_path* to *remote_path* (a new file) with ``sftp -b``.

    *remote_size* polls the file's size on the server (None while it does not exist);
    *on_progress* is called with it and may raise (cancel) to stop the client. Raises
    :class:`ClientFailed`, :class:`Stalled`, or what *on_progress* raised."""
    client = client or find_client()
    if client is None:
        raise FileNotFoundError("sftp")
    workdir = _secret_dir()
    proc: subprocess.Popen | None = None
    try:
        _write_private(workdir / "key", login.private_key)
        (workdir / "known_hosts").write_text(f"{HOST_ALIAS} {login.host_key_line}\n")
        os.symlink(local_path, workdir / "upload")  # a name the batch syntax cannot misread
        (workdir / "batch").write_text(f"put {quote_batch(str(workdir / 'upload'))} {quote_batch(remote_path)}\n")
        errors = open(workdir / "stderr", "wb")  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(
                command(client, login, workdir, timeout),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                cwd=workdir,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LC_ALL": "C"},
                preexec_fn=_die_with_parent,
            )
        finally:
            errors.close()

        def started() -> None:
            # The client has logged in (the file exists): it needs the key file no longer.
            (workdir / "key").unlink(missing_ok=True)

        seen = _follow(proc, timeout, remote_size, on_progress, started)
        if proc.returncode != 0:
            detail = _last_line(workdir / "stderr")
            raise ClientFailed(proc.returncode, detail, started=seen)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _follow(proc: subprocess.Popen, timeout: float, remote_size, on_progress, started) -> bool:
    """Wait for the client, reporting the remote size; True if the file was seen."""
    last_size, last_change = -1, time.monotonic()
    while True:
        try:
            proc.wait(POLL_SECONDS)
            return last_size >= 0 or remote_size() is not None
        except subprocess.TimeoutExpired:
            pass
        size = remote_size()
        now = time.monotonic()
        if size is not None and size != last_size:
            if last_size < 0:
                started()
            last_size, last_change = size, now
            on_progress(size)
        elif now - last_change > timeout + 3 * max(1, int(timeout // 3)):
            raise Stalled()


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return ""
