"""Benchmark the FTP / FTPS kind's upload against ``curl -T`` of the same file.

Run it on its own with ``.venv/bin/python bench/dest_ftp.py`` (``--help`` lists the
options), or through ``bench/destinations.py``, which calls :func:`run`. ``--json`` prints
one JSON object last.

Method
------
* **Server.** The test suite's pyftpdlib server (``tests/kinds/ftp_server.py``) in its own
  process on a free loopback port: an FTPS listener (explicit TLS required on control and
  data connections, TLS session reuse required, a certificate from a throw-away CA) and a
  plain FTP listener. Client and server share the machine's 2 cores; the server is one
  Python process, so it is usually the bottleneck of both clients alike.
* **File.** ``--size-mb`` (default 500) MiB of random bytes, made once in the work folder
  and reused while its size matches.
* **Variants**, alternated in each of ``--repeat`` rounds (default 3), medians reported:
  ``curl -T`` (``--ssl-reqd``, the CA given with ``--cacert``, credentials from a 0600
  ``--netrc-file``, never the command line; curl does EPSV, PBSZ/PROT P and resumes the
  TLS session on the data connection as the kind does) and the kind:
  ``FtpBackend.session()`` → ``upload()`` exactly as an upload task does it (connect,
  AUTH TLS with the pinned certificate, log in, PROT P, temporary name, sha256 of what was
  read, SIZE check, rename, QUIT), timed from before the connection to after the session
  closed, as curl's time includes its start and login. ``--plain`` adds both over plain FTP.
  ``--diagnose`` adds the kind once more per mode with the on-the-fly sha256 of the local
  copy switched off (a no-op digest, this benchmark only): the difference is what the
  contract's check that the local copy still matches its checksum costs (curl checks
  nothing). Over FTPS the single-process Python server is the bottleneck of both clients;
  over plain FTP it keeps up with curl and the client's sha256 becomes the limit.
* **CPU.** Each variant's client CPU seconds (curl: ``RUSAGE_CHILDREN``; the kind:
  ``RUSAGE_SELF``, its sender thread included) and the server's (``/proc/PID/stat``),
  medians. The machines are shared and noisy: wall-clock ratios of one run vary a lot,
  CPU seconds much less.
* **Checks.** Every uploaded file's sha256 is compared with the source's on the server's
  disk; a mismatch stops the benchmark (exit status 2). Uploaded files are deleted after
  each run.

Result keys: ``ftp_up_ratio`` (kind MB/s ÷ ``curl -T`` MB/s over FTPS, medians; target
≥ 0.8), ``ftp_up_mbps``, ``curl_up_mbps``, ``ftp_plain_up_ratio`` (with ``--plain``) and
``ftp_up_client_cpu_ratio`` (the kind's client CPU ÷ curl's, FTPS), ``ftp_load_avg`` (the
1-minute load average at the start and after each round) and ``rows`` (one per
variant: ``variant``, ``mb_s``, ``seconds``, ``ratio``, ``client_cpu_s``, ``server_cpu_s``,
``runs``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Run as a script, this folder comes first on sys.path, and bench/destinations.py would
# shadow the destinations package: the repository first, this folder not at all.
sys.path[:] = [str(REPO_DIR)] + [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
MIB = 1 << 20
TARGET_RATIO = 0.8

if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))


def _django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
        django.setup()


def _make_file(path: Path, size: int) -> str:
    if not (path.exists() and path.stat().st_size == size):
        with open(path, "wb") as out:
            left = size
            while left:
                block = os.urandom(min(4 * MIB, left))
                out.write(block)
                left -= len(block)
    return _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _no_local_sha256(expected: str):
    """Diagnostic only: the upload's on-the-fly sha256 of the local copy as a no-op."""
    from destinations.backends import base

    class NoDigest:
        def update(self, data) -> None:
            pass

        def hexdigest(self) -> str:
            return expected

    original = base.HashingReader.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self._digest = NoDigest()

    base.HashingReader.__init__ = init
    try:
        yield
    finally:
        base.HashingReader.__init__ = original


def _cpu(before, after) -> float:
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(args, workdir) -> dict:
    """Run the FTP section: returns ``ftp_up_ratio`` and the ``rows`` of the table.
    *args* is any object with (some of) ``size_mb``, ``repeat``, ``plain``, ``diagnose``."""
    size_mb = int(getattr(args, "size_mb", None) or getattr(args, "ftp_size_mb", None) or 500)
    repeat = int(getattr(args, "repeat", None) or 3)
    plain = bool(getattr(args, "plain", False))
    diagnose = bool(getattr(args, "diagnose", False))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    curl = shutil.which("curl")
    if curl is None:
        return {"ftp_up_ratio": None, "skipped": "curl is not installed (apt-get install curl)", "rows": []}
    _django()
    from django.test.utils import override_settings

    from destinations.backends.ftp import FtpBackend
    from tests.kinds import ftp_server as server_program

    source = workdir / f"ftp-bench-{size_mb}m.bin"
    size = size_mb * MIB
    expected = _make_file(source, size)
    scratch = Path(tempfile.mkdtemp(prefix="ftp-bench-", dir=workdir))
    home = scratch / "home"
    (home / "bench").mkdir(parents=True)
    pki = server_program.make_pki(scratch / "pki")
    password = "bench-" + os.urandom(6).hex()  # a throw-away server's password (no blanks: netrc)
    config = {
        "users": [{"name": "bench", "password": password, "home": str(home), "perm": "elradfmwMT"}],
        "listeners": [
            {
                "name": "ftps",
                "tls": True,
                "cert": str(pki["localhost_cert"]),
                "key": str(pki["localhost_key"]),
                "require_reuse": True,
            },
            {"name": "plain"},
        ],
    }
    netrc = scratch / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login bench password {password}\n")
    netrc.chmod(0o600)
    proc, ports = server_program.start(config, scratch)
    fingerprint = server_program.certificate_sha256(pki["localhost_cert"])
    times: dict[str, list[float]] = {}
    client_cpu: dict[str, list[float]] = {}
    server_cpu: dict[str, list[float]] = {}
    load = [os.getloadavg()[0]]  # the 1-minute load average at the start and after each round

    def server_seconds() -> float:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def check_and_remove(name: str) -> None:
        stored = home / "bench" / name
        if not stored.exists() or _sha256(stored) != expected:
            raise SystemExit(f"dest_ftp: the upload {name} does not match the source")
        stored.unlink()

    def curl_put(listener: str, round_: int) -> tuple[float, float]:
        name = f"curl-{listener}-{round_}.bin"
        command = [curl, "-sS", "--netrc-file", str(netrc), "-T", str(source)]
        if listener == "ftps":
            command += ["--ssl-reqd", "--cacert", str(pki["ca"])]
        command.append(f"ftp://127.0.0.1:{ports[listener]}/bench/{name}")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        check_and_remove(name)
        return elapsed, _cpu(before, after)

    def kind_put(listener: str, round_: int, *, hashing: bool = True) -> tuple[float, float]:
        name = f"kind-{listener}-{round_}{'' if hashing else '-nohash'}.bin"
        settings = {"host": "127.0.0.1", "port": ports[listener], "user": "bench"}
        settings.update({"plain_ftp": True} if listener == "plain" else {"tls_fingerprint": fingerprint})
        backend = FtpBackend.from_settings(settings, {"password": password})
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        with backend.session() as session, contextlib.nullcontext() if hashing else _no_local_sha256(expected):
            session.upload(source, "bench", name, expected_size=size, expected_sha256=expected)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        check_and_remove(name)
        return elapsed, _cpu(before, after)

    def unhashed(listener: str, round_: int) -> tuple[float, float]:
        return kind_put(listener, round_, hashing=False)

    variants = [("curl -T, FTPS", curl_put, "ftps"), ("kind, FTPS", kind_put, "ftps")]
    if diagnose:
        variants.append(("kind, FTPS, no sha256", unhashed, "ftps"))
    if plain:
        variants += [("curl -T, plain FTP", curl_put, "plain"), ("kind, plain FTP", kind_put, "plain")]
        if diagnose:
            variants.append(("kind, plain FTP, no sha256", unhashed, "plain"))
    try:
        with override_settings(BACKUPSITE_ALLOW_LOCAL_DESTINATIONS=True, BACKUPSITE_DESTINATION_TIMEOUT=60):
            for round_ in range(repeat):
                for label, put, listener in variants:
                    server_before = server_seconds()
                    elapsed, cpu = put(listener, round_)
                    times.setdefault(label, []).append(elapsed)
                    client_cpu.setdefault(label, []).append(cpu)
                    server_cpu.setdefault(label, []).append(server_seconds() - server_before)
                    print(
                        f"  round {round_ + 1}: {label}: {elapsed:.2f} s (client CPU {cpu:.2f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
                load.append(os.getloadavg()[0])
    finally:
        server_program.stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)

    def mbps(label: str) -> float:
        return size / MIB / statistics.median(times[label])

    def reference(label: str) -> str:
        return label.replace("kind", "curl -T").replace(", no sha256", "")

    rows = [
        {
            "variant": label,
            "mb_s": round(mbps(label), 1),
            "seconds": round(statistics.median(times[label]), 2),
            "ratio": round(mbps(label) / mbps(reference(label)), 3),
            "client_cpu_s": round(statistics.median(client_cpu[label]), 2),
            "server_cpu_s": round(statistics.median(server_cpu[label]), 2),
            "runs": len(times[label]),
        }
        for label, _, _ in variants
    ]
    result = {
        "ftp_up_ratio": round(mbps("kind, FTPS") / mbps("curl -T, FTPS"), 3),
        "ftp_up_mbps": round(mbps("kind, FTPS"), 1),
        "curl_up_mbps": round(mbps("curl -T, FTPS"), 1),
        "ftp_up_client_cpu_ratio": round(
            statistics.median(client_cpu["kind, FTPS"]) / statistics.median(client_cpu["curl -T, FTPS"]), 3
        ),
        "ftp_size_mb": size_mb,
        "ftp_load_avg": [round(v, 2) for v in load],
        "rows": rows,
    }
    if plain:
        result["ftp_plain_up_ratio"] = round(mbps("kind, plain FTP") / mbps("curl -T, plain FTP"), 3)
    return result


def format_rows(rows: list[dict]) -> str:
    header = ("variant", "MB/s", "seconds", "vs curl", "client CPU", "server CPU", "runs")
    lines = ["{:<28} {:>8} {:>8} {:>8} {:>11} {:>11} {:>5}".format(*header)]
    lines += [
        f"{r['variant']:<28} {r['mb_s']:>8.1f} {r['seconds']:>8.2f} {r['ratio'] * 100:>7.0f}% "
        f"{r['client_cpu_s']:>10.2f}s {r['server_cpu_s']:>10.2f}s {r['runs']:>5}"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=500, help="size of the uploaded file in MiB (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="alternated rounds (default 3)")
    parser.add_argument("--plain", action="store_true", help="also compare over plain FTP")
    parser.add_argument("--diagnose", action="store_true", help="also run the kind without the local sha256")
    parser.add_argument("--workdir", type=Path, default=BENCH_DIR / "data", help="where the file is made")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if ftp_up_ratio < {TARGET_RATIO}")
    args = parser.parse_args(argv)
    result = run(args, args.workdir)
    if result.get("skipped"):
        print(f"dest_ftp: skipped: {result['skipped']}", file=sys.stderr)
        return 0
    print(format_rows(result["rows"]))
    print(f"load average (1 min) at the start and after each round: {result['ftp_load_avg']}")
    print(f"ftp_up_ratio {result['ftp_up_ratio']:.3f} (target >= {TARGET_RATIO})")
    if args.json:
        print(json.dumps(result))
    if args.check and result["ftp_up_ratio"] < TARGET_RATIO:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
