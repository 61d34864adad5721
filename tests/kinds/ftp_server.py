"""A pyftpdlib FTP/FTPS server for the tests and the bench, run as a child process.

    python tests/kinds/ftp_server.py CONFIG.json

The configuration (a 0600 JSON file: it holds the users' passwords, which never go on a
command line) lists users and listeners; the server prints one line
``{"ready": {"<listener>": <port>, ...}}`` on stdout once every listener accepts
connections, and dies with its parent (``PR_SET_PDEATHSIG``). Each listener:

* ``tls``: explicit TLS (``AUTH TLS``) *required* on the control connection and on data
  connections (``PROT P``), with ``cert`` (PEM chain) and ``key``;
* ``require_reuse``: a TLS data connection that does not resume the control
  connection's TLS session is refused with ``522`` (like vsftpd's ``require_ssl_reuse``);
* ``passive_ports``: the only ports data connections listen on;
* ``masquerade``: the address announced in ``227`` replies (a NAT-ed or hostile server);
* ``drop``: commands the listener does not know (``EPSV``, ``MLSD``, ``SIZE``...: an old
  server), answered ``500``.

``PORT``/``EPRT`` are dropped everywhere: backupsite uses passive mode only, and a test
would fail if it ever tried active mode. This module imports nothing from backupsite and
can also be imported for :func:`make_pki` (test certificates made with ``cryptography``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import select
import signal
import subprocess
import sys
from pathlib import Path


# --- certificates (used by the fixtures and the bench, in the parent process) --------------
def make_pki(directory: Path) -> dict[str, Path]:
    """A private CA and two server certificates it signed: ``localhost`` (also valid for
    127.0.0.1) and ``other.example.net`` (the wrong-host case). Returns the PEM paths:
    ``ca``, ``localhost_cert``, ``localhost_key``, ``other_cert``, ``other_key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("backupsite test CA"))
        .issuer_name(name("backupsite test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(label: str, common: str, sans: list[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        paths[f"{label}_cert"] = directory / f"{label}.pem"
        paths[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{label}_key"] = directory / f"{label}.key"
        write_key(key, paths[f"{label}_key"])

    leaf("localhost", "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    leaf("other", "other.example.net", [x509.DNSName("other.example.net")])
    return paths


def certificate_sha256(pem_path: Path) -> str:
    """``AB:CD:…`` of a PEM certificate (what the connection test shows)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def start(config: dict, directory: Path, *, timeout: float = 60) -> tuple[subprocess.Popen, dict[str, int]]:
    """Start the server described by *config* (its files under *directory*); return the
    process and the port of every listener once all accept connections."""
    config_path = directory / "ftp-server.json"
    config_path.write_text(json.dumps({**config, "log": str(directory / "ftp-server.log")}))
    config_path.chmod(0o600)
    stderr = open(directory / "ftp-server.stderr", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(config_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=directory,
    )
    stderr.close()
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        stop(proc)
        tail = (directory / "ftp-server.stderr").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the FTP server did not start within {timeout} s:\n{tail}")
    return proc, json.loads(line)["ready"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# --- the server (in the child process) ------------------------------------------------------
def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl
        sys.exit(1)


def _handler_class(spec: dict, authorizer):
    from pyftpdlib.handlers import DTPHandler, FTPHandler

    dropped = {"PORT", "EPRT", *spec.get("drop", [])}
    attrs: dict = {
        "authorizer": authorizer,
        "banner": "backupsite test server (banner text that must never reach a message)",
        "auth_failed_timeout": 0.05,  # pyftpdlib waits 3 s after a wrong password by default
        "max_login_attempts": 100,
        "timeout": 120,
        "passive_ports": spec.get("passive_ports"),
        "masquerade_address": spec.get("masquerade"),
        "use_sendfile": False,
    }
    if spec.get("tls"):
        from OpenSSL._util import lib as ssl_lib
        from pyftpdlib.exceptions import _FileReadWriteError
        from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

        require_reuse = bool(spec.get("require_reuse"))

        class DataHandler(TLS_DTPHandler):
            ac_in_buffer_size = 256 * 1024
            ac_out_buffer_size = 256 * 1024

            def handle_error(self):
                # pyftpdlib's TLS data handler drops the connection on a failed write
                # (a full disk) without a reply, leaving the client to time out. Real
                # servers answer 451/452; answer like pyftpdlib's plain handler does.
                try:
                    raise  # (the exception being handled)
                except _FileReadWriteError as err:
                    cause = err.__cause__ if isinstance(err.__cause__, OSError) else err
                    why = os.strerror(cause.errno) if cause.errno else "Write error"
                except Exception:  # noqa: BLE001 - anything else: pyftpdlib's own handling
                    return super().handle_error()
                self._error = True
                self._resp = (f"426 {why}; transfer aborted.", logging.warning)
                DTPHandler.close(self)

            def handle_ssl_established(self):
                if require_reuse and not ssl_lib.SSL_session_reused(self.socket._ssl):
                    # vsftpd's require_ssl_reuse: a data connection must resume the
                    # control connection's session, or a third party could take it.
                    self._resp = ("522 TLS session reuse required on the data connection.", logging.info)
                    self.close()

        base = TLS_FTPHandler
        attrs.update(
            certfile=spec["cert"],
            keyfile=spec["key"],
            ssl_context=None,  # built from this class's certificate on first use
            tls_control_required=True,
            tls_data_required=True,
            dtp_handler=DataHandler,
        )
    else:

        class DataHandler(DTPHandler):
            ac_in_buffer_size = 256 * 1024
            ac_out_buffer_size = 256 * 1024

        base = FTPHandler
        attrs["dtp_handler"] = DataHandler
    attrs["proto_cmds"] = {cmd: info for cmd, info in base.proto_cmds.items() if cmd not in dropped}
    return type(f"Handler_{spec['name']}", (base,), attrs)


def serve(config: dict) -> None:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

    logging.basicConfig(
        filename=config.get("log"),
        level=config.get("log_level", "WARNING"),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    authorizer = DummyAuthorizer()
    for user in config["users"]:
        authorizer.add_user(user["name"], user["password"], user["home"], perm=user["perm"])
    ioloop = IOLoop()
    ports = {}
    for spec in config["listeners"]:
        address = (config.get("host", "127.0.0.1"), spec.get("port", 0))
        server = FTPServer(address, _handler_class(spec, authorizer), ioloop=ioloop)
        ports[spec["name"]] = server.address[1]
    print(json.dumps({"ready": ports}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ioloop.loop(timeout=1.0)


def main(argv: list[str]) -> None:
    _die_with_parent()
    serve(json.loads(Path(argv[1]).read_text()))


if __name__ == "__main__":
    main(sys.argv)
