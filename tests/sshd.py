"""A real OpenSSH ``sshd`` on loopback, for the SFTP tests and ``bench/destinations.py``.

Plain module (no pytest, no Django) so the bench can use it too. As root only: sshd
needs root to switch to the login user, and password logins need real local accounts,
so :class:`SshServer` creates dedicated users with ``useradd`` (random names
``bksftp<hex>``, shell ``nologin``, random passwords set with ``chpasswd``, homes in the
server's temp dir) and removes them with ``userdel`` when it stops. Accounts left by a
killed run (their home directory is gone) are removed by the next start.

The server's configuration lives in a temp dir: its own host key (ed25519 unless asked
otherwise), ``-D -e -f sshd_config``, a free port on 127.0.0.1, ``UsePAM no``,
``ForceCommand internal-sftp`` (the accounts can do nothing but SFTP),
``AuthorizedKeysFile`` in the temp dir. The process gets a parent-death signal.

    server = SshServer.start(users=[UserSpec("pw", password=True), UserSpec("key", keys=2)])
    server.users["pw"].password, server.users["key"].keys[0].private_pem, server.fingerprint
    server.stop()
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
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

USER_PREFIX = "bksftp"
START_TIMEOUT = 30

_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class SshdUnavailable(RuntimeError):
    """What is missing to run the server (the tests skip or fail with this text)."""


def find_sshd() -> str:
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SshdUnavailable("'sshd' is not installed (apt-get install openssh-server, or run .ci/run as root)")


def check_can_run() -> None:
    find_sshd()
    for tool in ("ssh-keygen", "useradd", "userdel", "chpasswd"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            raise SshdUnavailable(f"{tool!r} is not installed (apt-get install openssh-client passwd)")
    if os.geteuid() != 0:
        raise SshdUnavailable(
            "the SFTP tests start sshd with their own local accounts (useradd, password logins): they need root"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class KeyPair:
    """A login key: the private key as pasted into the form, its public line."""

    private_pem: str
    public_line: str
    passphrase: str | None = None
    path: Path | None = None  # the private key file (0600, owned by root)


@dataclass
class UserSpec:
    label: str
    password: bool = False
    keys: int = 0  # key pairs without passphrase
    passphrase_keys: int = 0  # key pairs with a passphrase
    key_type: str = "ed25519"


@dataclass
class SshUser:
    label: str
    name: str
    uid: int
    gid: int
    home: Path
    password: str | None = None
    keys: list[KeyPair] = field(default_factory=list)

    def chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)

    def makedirs(self, path: Path) -> None:
        """Create *path* (under the home) as this user would: owned by them."""
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            p.mkdir(mode=0o755)
            self.chown(p)


def generate_key(directory: Path, name: str, key_type: str = "ed25519", passphrase: str = "") -> KeyPair:
    path = directory / name
    args = [_tool("ssh-keygen"), "-q", "-t", key_type, "-N", passphrase, "-C", name, "-f", str(path)]
    if key_type == "rsa":
        args[4:4] = ["-b", "3072"]
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return KeyPair(
        private_pem=path.read_text(),
        public_line=(directory / f"{name}.pub").read_text().strip(),
        passphrase=passphrase or None,
        path=path,
    )


def host_key_fingerprint(public_line: str) -> str:
    """``SHA256:…`` of a public key line, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _remove_stale_users() -> None:
    """Accounts of earlier runs that were killed before they could clean up: their home
    (in a temp dir that no longer exists) is gone."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(USER_PREFIX) and not os.path.isdir(entry.pw_dir):
            subprocess.run([_tool("userdel"), "-f", entry.pw_name], capture_output=True, timeout=30, check=False)


def _create_user(spec: UserSpec, homes: Path, keys_dir: Path, authorized: Path) -> SshUser:
    name = f"{USER_PREFIX}{secrets.token_hex(4)}"
    home = homes / name
    home.mkdir(mode=0o755)  # before the account: a concurrent sweep keeps accounts whose home exists
    subprocess.run(
        [
            _tool("useradd"),
            "--no-create-home",
            "--no-user-group",
            "--gid",
            "nogroup",
            "--home-dir",
            str(home),
            "--shell",
            "/usr/sbin/nologin",
            "--password",
            "*",  # no password, but not locked (sshd refuses locked accounts to keys too)
            "--comment",
            "backupsite SFTP test account",
            name,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    entry = pwd.getpwnam(name)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    user = SshUser(spec.label, name, entry.pw_uid, entry.pw_gid, home)
    if spec.password:
        # Blanks, quotes and non-ASCII: the password must survive any quoting.
        user.password = f"pw \"'\\ ü {secrets.token_hex(8)}"
        subprocess.run(
            [_tool("chpasswd")], input=f"{name}:{user.password}\n".encode(), check=True, capture_output=True, timeout=30
        )
    for i in range(spec.keys):
        user.keys.append(generate_key(keys_dir, f"{name}-key{i}", spec.key_type))
    for i in range(spec.passphrase_keys):
        user.keys.append(generate_key(keys_dir, f"{name}-pkey{i}", spec.key_type, f"phrase {secrets.token_hex(6)}"))
    if user.keys:
        path = authorized / name
        path.write_text("".join(k.public_line + "\n" for k in user.keys))
        path.chmod(0o600)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return user


@dataclass
class SshServer:
    directory: Path
    port: int
    users: dict[str, SshUser]
    host_key: KeyPair
    host_key_type: str
    proc: subprocess.Popen | None = None
    host: str = "127.0.0.1"
    owns_users: bool = True

    @property
    def fingerprint(self) -> str:
        return host_key_fingerprint(self.host_key.public_line)

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @classmethod
    def start(
        cls,
        users: list[UserSpec] | None = None,
        *,
        host_key_type: str = "ed25519",
        share_users_with: SshServer | None = None,
    ) -> SshServer:
        """Start a server; with *share_users_with*, another server (its own host key and
        port) for the same accounts and homes (a "changed host key")."""
        check_can_run()
        sshd = find_sshd()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        directory = Path(tempfile.mkdtemp(prefix="backupsite-sshd-"))
        directory.chmod(0o711)  # the accounts traverse it to reach their homes
        try:
            keys_dir = directory / "keys"
            keys_dir.mkdir(mode=0o700)
            host_key = generate_key(keys_dir, "host_key", host_key_type)
            if share_users_with is not None:
                accounts = share_users_with.users
                authorized = share_users_with.directory / "authorized"
                owns = False
            else:
                _remove_stale_users()
                homes = directory / "home"
                homes.mkdir(mode=0o711)
                authorized = directory / "authorized"
                authorized.mkdir(mode=0o711)
                accounts = {}
                for spec in users or []:
                    accounts[spec.label] = _create_user(spec, homes, keys_dir, authorized)
                owns = True
            server = cls(directory, 0, accounts, host_key, host_key_type, owns_users=owns)
            server._launch(sshd, authorized)
        except BaseException:
            if share_users_with is None:
                for user in locals().get("accounts", {}).values():
                    subprocess.run([_tool("userdel"), "-f", user.name], capture_output=True, timeout=30, check=False)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return server

    def _launch(self, sshd: str, authorized: Path) -> None:
        self.port = free_port()
        names = " ".join(u.name for u in self.users.values()) or "nobody-at-all"
        config = self.directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key.path}",
                    "PidFile none",
                    "UsePAM no",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin no",
                    f"AuthorizedKeysFile {authorized}/%u",
                    "StrictModes no",
                    f"AllowUsers {names}",
                    "Subsystem sftp internal-sftp",
                    "ForceCommand internal-sftp",
                    "PermitTTY no",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    "X11Forwarding no",
                    "MaxStartups 50:30:100",
                    "MaxAuthTries 6",
                    "LoginGraceTime 30",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        log = open(self.log, "ab")  # noqa: SIM115 - kept open for the server's life
        try:
            self.proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._banner_ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start within {START_TIMEOUT} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _banner_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.owns_users:
            for user in self.users.values():
                subprocess.run([_tool("userdel"), "-f", user.name], capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)
