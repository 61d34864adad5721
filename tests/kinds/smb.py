"""The Windows share kind against a real Samba ``smbd`` started for the test session.

``smb_server`` (session-scoped): ``smbd -F`` with its own smb.conf, private, lock,
state and cache directories in a temporary folder, on a free loopback port
(``smb ports``), users in a ``tdbsam`` file of that folder. Shares:

* ``backups``: the test user only (``valid users``), no guests;
* ``public``: guests only (``guest only``), while the server maps unknown users to the
  guest (``map to guest = Bad User``), so a client that accepted a guest session would
  get in there with any user name: the tests prove the kind never does;
* ``sealed``: the server requires encryption on it (``smb encrypt = required``);
* ``closed``: nobody may use it (``valid users = nobody``);
* ``small``: on an 8 MiB tmpfs of its own (disk-full tests), when this machine lets the
  tests mount one (root); otherwise absent and the test says why it skips.

smbd must run as root (it switches to the share's user for every file access), so
the fixture needs root, like CI, and creates a dedicated Unix user for the shares
(``useradd``, once per machine). It gets a parent-death signal, so a killed pytest does
not leave it running, and everything is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kinds import KindUnderTest, file_access, folder_path

SMB_USER = "bksmbtest"  # the Unix (and Samba) user the shares belong to
SMALL_SHARE_BYTES = 8 * 1024 * 1024


@dataclass
class SambaServer:
    directory: Path
    port: int
    user: str
    password: str
    uid: int
    gid: int
    shares: dict[str, Path]
    log: Path
    proc: subprocess.Popen
    small_mounted: bool = False
    startup_seconds: float = 0.0
    _mounts: list[Path] = field(default_factory=list)

    host: str = "127.0.0.1"

    def settings(self, share: str = "backups", path: str = "", **overrides) -> dict:
        values = {"host": self.host, "port": self.port, "share": share, "path": path, "user": self.user}
        values.update(overrides)
        return values

    def secrets(self) -> dict:
        return {"password": self.password}

    def make_dir(self, share: str, relative: str) -> Path:
        """A folder in a share, owned by the share's user (as if made over SMB)."""
        path = self.shares[share]
        for part in relative.split("/"):
            path = path / part
            if not path.exists():
                path.mkdir()
                os.chown(path, self.uid, self.gid)
        return path

    def write_file(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chown(path, self.uid, self.gid)

    def stop(self) -> None:
        _cleanup(self.proc, self._mounts, self.directory)

    def children(self) -> list[int]:
        """The smbd processes serving one client connection each."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]


class SambaUnavailable(RuntimeError):
    """smbd cannot be started here (a binary is missing, not root): the reason."""


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise SambaUnavailable(f"{name!r} is not installed (apt-get install samba smbclient, or run .ci/run as root)")
    return found


def _ensure_unix_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    useradd = _binary("useradd")
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        check=False,  # exit 9: another test session created it a moment ago
    )
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise SambaUnavailable(
            f"could not create the Unix user {name!r} for the Samba shares (useradd failed)"
        ) from None


def _config(directory: Path, port: int, shares: dict[str, Path], user: str, small: bool) -> str:
    d = directory
    lines = [
        "[global]",
        "  server role = standalone server",
        f"  smb ports = {port}",
        "  interfaces = 127.0.0.1",
        "  bind interfaces only = yes",
        "  disable netbios = yes",
        f"  private dir = {d / 'private'}",
        f"  lock directory = {d / 'lock'}",
        f"  state directory = {d / 'state'}",
        f"  cache directory = {d / 'cache'}",
        f"  pid directory = {d / 'pid'}",
        f"  ncalrpc dir = {d / 'ncalrpc'}",
        f"  passdb backend = tdbsam:{d / 'private' / 'passdb.tdb'}",
        f"  log file = {d / 'smbd.log'}",
        "  log level = 1",
        # Unknown user names get a guest session (Samba's classic NAS setting): the
        # kind must refuse it, not "succeed" into the guest share.
        "  map to guest = Bad User",
        f"  guest account = {user}",
        "  load printers = no",
        "  printing = bsd",
        "  printcap name = /dev/null",
        "  disable spoolss = yes",
        "  server min protocol = SMB2_02",
        "  kernel oplocks = no",
        "  usershare max shares = 0",
        "",
        "[backups]",
        f"  path = {shares['backups']}",
        "  read only = no",
        f"  valid users = {user}",
        "  guest ok = no",
        "",
        "[public]",
        f"  path = {shares['public']}",
        "  read only = no",
        "  guest ok = yes",
        "  guest only = yes",
        "",
        "[sealed]",
        f"  path = {shares['sealed']}",
        "  read only = no",
        f"  valid users = {user}",
        "  smb encrypt = required",
        "",
        "[closed]",
        f"  path = {shares['closed']}",
        "  read only = no",
        "  valid users = nobody",
    ]
    if small:
        lines += ["", "[small]", f"  path = {shares['small']}", "  read only = no", f"  valid users = {user}"]
    return "\n".join(lines) + "\n"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def start_samba() -> SambaServer:
    """Start smbd as described in the module docstring; :meth:`SambaServer.stop` ends
    it. Raises :class:`SambaUnavailable` where it cannot run."""
    # Imported here: other test modules load tests.servers as a pytest plugin, which
    # must import it first (for assertion rewriting).
    from tests.servers import START_TIMEOUT, _die_with_parent, _tail, free_port

    smbd = _binary("smbd")
    smbpasswd = _binary("smbpasswd")
    if os.geteuid() != 0:
        raise SambaUnavailable("smbd must run as root to act as the share's user (run as root, as CI does)")
    started = time.monotonic()
    entry = _ensure_unix_user(SMB_USER)
    directory = Path(tempfile.mkdtemp(prefix="backupsite-smbd-"))
    directory.chmod(0o711)  # smbd, as the share's user, must reach the shares below
    for name in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
        (directory / name).mkdir(mode=0o700)
    root = directory / "shares"
    root.mkdir(mode=0o711)
    shares = {name: root / name for name in ("backups", "public", "sealed", "closed", "small")}
    for path in shares.values():
        path.mkdir(mode=0o700)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    mounts: list[Path] = []
    proc = None
    try:
        mounted = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={SMALL_SHARE_BYTES},mode=0700,uid={entry.pw_uid},gid={entry.pw_gid}",
                "tmpfs",
                str(shares["small"]),
            ],
            capture_output=True,
            check=False,
        )
        small = mounted.returncode == 0
        if small:
            mounts.append(shares["small"])
        port = free_port()
        conf = directory / "smb.conf"
        conf.write_text(_config(directory, port, shares, SMB_USER, small))
        # Blanks, quotes, a backslash and non-ASCII: the password must survive any encoding.
        password = f"smb pass \"'\\ ü-{secrets.token_hex(6)}"
        added = subprocess.run(
            [smbpasswd, "-c", str(conf), "-a", "-s", SMB_USER],
            input=f"{password}\n{password}\n".encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if added.returncode != 0:
            raise RuntimeError(f"smbpasswd failed: {added.stderr.decode(errors='replace')}")
        log = directory / "smbd.stdout"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [smbd, "-F", "--no-process-group", "--debug-stdout", "-s", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory,
                preexec_fn=_die_with_parent,
                # Its own process group: smbd signals its whole group when it stops.
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(port):
            if proc.poll() is not None:
                raise RuntimeError(f"smbd exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"smbd did not start within {START_TIMEOUT} s:\n{_tail(log)}")
            time.sleep(0.05)
    except BaseException:
        _cleanup(proc, mounts, directory)
        raise
    return SambaServer(
        directory=directory,
        port=port,
        user=SMB_USER,
        password=password,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        shares=shares,
        log=log,
        proc=proc,
        small_mounted=small,
        startup_seconds=time.monotonic() - started,
        _mounts=mounts,
    )


def _cleanup(proc: subprocess.Popen | None, mounts: list[Path], directory: Path) -> None:
    from tests.servers import _stop

    if proc is not None:
        _stop(proc, signal.SIGTERM)
    for mount in mounts:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def smb_server():
    from tests.servers import missing

    try:
        server = start_samba()
    except SambaUnavailable as exc:
        missing(str(exc))
        raise
    yield server
    server.stop()


@pytest.fixture
def smb_kind(smb_server, settings) -> KindUnderTest:
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    base = f"t-{secrets.token_hex(4)}"
    smb_server.make_dir("backups", base)
    share_dir = smb_server.shares["backups"] / base

    def raw_write(folder: str, name: str, data: bytes) -> None:
        if folder:
            smb_server.make_dir("backups", f"{base}/{folder}")
        smb_server.write_file(folder_path(share_dir, folder) / name, data)

    return KindUnderTest(
        kind="smb",
        settings=smb_server.settings(path=base),
        secrets=smb_server.secrets(),
        **file_access(share_dir, raw_write),
        wrong_secrets={"password": "wrong-" + secrets.token_hex(4)},
        plain_secrets=[smb_server.password],
    )
