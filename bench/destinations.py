"""Benchmark the destination kinds against the stock tools, in the same run.

Run it as root with ``.venv/bin/python bench/destinations.py`` (or ``make bench-destinations``);
``--json`` prints one JSON object as the last line, ``--help`` lists the options.

SFTP (this file)
----------------
* **Server.** A loopback OpenSSH ``sshd`` the bench starts itself (``tests/sshd.py``: its own
  host key and accounts, ``internal-sftp``), one account logging in with an Ed25519 key, one
  with a password. Client and server share the machine's cores.
* **File.** ``--size-mb`` (default 500) MiB of random bytes in ``bench/data/dest/``, made once
  and reused; a ``--small-mb`` file (default 100) shows whether memory grows with file size.
* **Variants**, each in its own process so that its wall time includes start-up, login and
  (for the panel) hashing the file for the checksum, and its peak RSS is its own:

  ================  ==========================================================================
  ``openssh-put``   ``sftp -b`` with default settings (``-F /dev/null``, the key, a known_hosts)
  ``key``           the panel's SFTP backend, key login, as configured (``KEY_UPLOADS_VIA_OPENSSH``)
  ``key-paramiko``  the same with paramiko only (``KEY_UPLOADS_VIA_OPENSSH = False``)
  ``password``      the panel's SFTP backend, password login (always paramiko)
  ``openssh-get``   ``sftp -b`` ``get`` of the uploaded file
  ``download``      the panel's ``open()`` stream copied to a local file
  ================  ==========================================================================

* **Timing.** ``--rounds`` rounds (default 3); each round runs every variant once, OpenSSH and
  panel alternating, so the noise of a shared machine falls on both. The table shows medians
  and the ratio of OpenSSH's median time to the variant's (= throughput ratio). Remote files are
  removed and the disk ``sync``-ed, untimed, between runs.
* **Memory.** Peak RSS is ``VmHWM`` of the worker process (read by itself at exit) and, for the
  OpenSSH-client path, of its ``sftp``/``ssh`` children (polled).
* **Validity.** Every upload's remote size is checked, the first round's remote sha256 too, and
  every download is compared with the source. A mismatch stops the bench with exit status 2.

JSON keys: ``sftp_up_ratio`` (key login, the faster of the two modes), ``sftp_up_ratio_password``,
``sftp_down_ratio``, ``sftp_peak_rss_mb``, plus ``sftp_up_ratio_key_openssh``,
``sftp_up_ratio_key_paramiko``, ``sftp_key_faster_mode``, ``sftp_rss_growth_mb`` and the MB/s.
Targets (the issue's): key ≥ 0.90, password ≥ 0.70, download ≥ 0.60, peak RSS ≤ 80 MB and flat.

Sections of other kinds
-----------------------
``bench/dest_ftp.py`` and ``bench/dest_smb.py`` (written with those kinds) are imported when
they exist. Each exposes::

    def run(args: argparse.Namespace, workdir: pathlib.Path) -> dict

returning its JSON keys (``ftp_up_ratio``, ``smb_up_ratio``, …) plus an optional ``"rows"``: a
list of :class:`Row` (or dicts with the same fields) for the table. ``workdir`` is a scratch
directory of its own (removed afterwards, data files may be kept in ``args.data``). It may
also define ``add_arguments(parser)`` for its own options. Shared helpers, importable as
``from bench.destinations import ...``: :func:`make_random_file`, :func:`sha256_of`,
:func:`run_command` (wall time, CPU and peak RSS of a command), :func:`vmhwm_kib`,
:class:`PeakSampler`, :func:`median`, :class:`Row`, :func:`fail`. A section that cannot run
(a missing binary) returns ``{"rows": [Row(name, note="skipped: …")]}``.

Exit status: 0; with ``--check``, 1 if a target is missed; 2 if a result is wrong or a
command fails.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Run as a script, this folder comes first on sys.path and "destinations" would be this
# file: put the repository first so "destinations" is the Django app.
sys.path[:] = [str(REPO_DIR)] + [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]

MIB = 1 << 20
SECTIONS = ("dest_ftp", "dest_smb")
TARGETS = {
    "sftp_up_ratio": 0.90,
    "sftp_up_ratio_password": 0.70,
    "sftp_down_ratio": 0.60,
}
TARGET_RSS_MB = 80


# --------------------------------------------------------------------------- shared helpers
@dataclass
class Row:
    """One line of the table."""

    variant: str
    mb_s: float | None = None
    ratio: float | None = None  # vs the stock tool (its time / this one's)
    rss_mb: float | None = None
    cpu_s: float | None = None
    note: str = ""


def fail(message: str) -> None:
    print(f"\nFAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def median(values: list[float]) -> float:
    return statistics.median(values)


def make_random_file(path: Path, size: int) -> Path:
    """*size* random bytes at *path*, kept while its size is right (made once)."""
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MIB)
            fh.write(os.urandom(n))
            left -= n
    tmp.rename(path)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def vmhwm_kib(pid: int | str = "self") -> int:
    """The kernel's high-water mark of a process's RSS (VmHWM); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int | str) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(x) for x in fh.read().split()]
        except OSError:
            continue
    return found


class PeakSampler(threading.Thread):
    """Poll VmHWM of a process's descendants (or of given pids) until stopped; ``peak_kib``
    is the largest single process seen."""

    def __init__(self, root: int | str = "self", *, pids: list[int] | None = None, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.pids = pids
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._done = threading.Event()

    def _targets(self) -> list[int]:
        if self.pids is not None:
            return self.pids
        todo, seen = _children(self.root), ([] if self.root == "self" else [int(self.root)])
        while todo:
            pid = todo.pop()
            seen.append(pid)
            todo += _children(pid)
        return seen

    def run(self) -> None:
        while True:
            for pid in self._targets():
                self.peaks[pid] = max(self.peaks.get(pid, 0), vmhwm_kib(pid))
            if self._done.wait(self.interval):
                return

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kib

    @property
    def peak_kib(self) -> int:
        return max(self.peaks.values(), default=0)


def run_command(argv: list[str], *, env: dict | None = None, cwd: Path | None = None) -> tuple[float, float, int, str]:
    """Run a command; return (wall seconds, CPU seconds of it and its children, peak RSS KiB
    of its largest process, stdout). A failure stops the bench."""
    start = time.perf_counter()
    pipe = subprocess.PIPE
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, env=env, cwd=cwd)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    err = proc.stderr.read()
    reader.join()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # keep the zombie: its VmHWM is gone, its pid stays ours
    wall = time.perf_counter() - start
    own = vmhwm_kib(proc.pid)
    sampler.stop()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        fail(f"{Path(argv[0]).name} failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    peak = max(own, sampler.peak_kib)
    return wall, usage.ru_utime + usage.ru_stime, peak, b"".join(out_chunks).decode(errors="replace")


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    header = f"{'variant':<22} {'MB/s':>8} {'vs tool':>8} {'peak RSS':>9} {'CPU s':>7}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        mb_s = f"{r.mb_s:8.1f}" if r.mb_s is not None else f"{'':8}"
        ratio = f"{r.ratio:7.0%} " if r.ratio is not None else f"{'':8}"
        rss = f"{r.rss_mb:6.0f} MB" if r.rss_mb is not None else f"{'':9}"
        cpu = f"{r.cpu_s:7.2f}" if r.cpu_s is not None else f"{'':7}"
        print(f"{r.variant:<22} {mb_s} {ratio} {rss} {cpu}  {r.note}")


# --------------------------------------------------------------------------- SFTP workers
def _configure_django() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(BACKUPSITE_DESTINATION_TIMEOUT=60, BACKUPSITE_ALLOW_LOCAL_DESTINATIONS=True)


def worker_sftp(spec_json: str) -> dict:
    """One panel transfer, in its own process: ``spec`` names the server, login, file and op."""
    spec = json.loads(spec_json)
    _configure_django()
    from destinations.backends import sftp
    from destinations.backends.sftp import SftpBackend, SftpConf

    sftp.KEY_UPLOADS_VIA_OPENSSH = spec["via_openssh"]
    conf = SftpConf(
        host="127.0.0.1",
        port=spec["port"],
        path=spec["path"],
        user=spec["user"],
        host_key_fingerprint=spec["fingerprint"],
    )
    backend = SftpBackend(conf, spec["secrets"])
    children = PeakSampler("self")
    children.start()
    started = time.perf_counter()
    with backend.session() as session:
        if spec["op"] == "up":
            path = Path(spec["local"])
            size = path.stat().st_size
            session.upload(path, "bench", spec["name"], expected_size=size, expected_sha256=spec["sha256"])
            via = session.bulk_via
        else:
            buf = bytearray(MIB)
            view = memoryview(buf)
            with session.open("bench", spec["name"]) as src, open(spec["local"], "wb") as out:
                while n := src.readinto(buf):
                    out.write(view[:n])
            via = "paramiko"
    transfer = time.perf_counter() - started
    return {"transfer": transfer, "via": via, "children_kib": children.stop(), "vmhwm_kib": vmhwm_kib()}


WORKERS = {"sftp": worker_sftp}


def run_worker(name: str, *args: str) -> tuple[float, float, int, dict]:
    """``WORKERS[name](*args)`` in a new Python process: (wall, CPU, peak RSS KiB, its report)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, *args]
    wall, cpu, peak, out = run_command(argv)
    report = json.loads(out.strip().splitlines()[-1])
    return wall, cpu, max(peak, report["vmhwm_kib"], report.get("children_kib", 0)), report


# --------------------------------------------------------------------------- SFTP section
class SftpBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from tests.sshd import SshServer, UserSpec

        self.args = args
        self.workdir = workdir
        self.server = SshServer.start(users=[UserSpec("key", keys=1), UserSpec("password", password=True)])
        self.key_user = self.server.users["key"]
        self.pw_user = self.server.users["password"]
        for user in (self.key_user, self.pw_user):
            user.makedirs(user.home / "bench")
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.server.port} {self.server.host_key.public_line}\n")

    def close(self) -> None:
        self.server.stop()

    # --- the stock client ---
    def openssh(self, command: str) -> tuple[float, float, int]:
        batch = self.workdir / "batch"
        batch.write_text(command + "\n")
        argv = [
            "sftp",
            "-q",
            "-F",
            "/dev/null",
            "-b",
            str(batch),
            "-i",
            str(self.key_user.keys[0].path),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-P",
            str(self.server.port),
            f"{self.key_user.name}@127.0.0.1",
        ]
        wall, cpu, peak, _ = run_command(argv, cwd=self.workdir)
        return wall, cpu, peak

    # --- the panel ---
    def panel(self, mode: str, op: str, local: Path, name: str, sha256: str | None = None) -> tuple:
        user = self.pw_user if mode == "password" else self.key_user
        secrets = {"password": user.password} if mode == "password" else {"private_key": user.keys[0].private_pem}
        spec = {
            "port": self.server.port,
            "path": ".",
            "user": user.name,
            "fingerprint": self.server.fingerprint,
            "secrets": secrets,
            "via_openssh": mode == "key",
            "op": op,
            "local": str(local),
            "name": name,
            "sha256": sha256,
        }
        return run_worker("sftp", json.dumps(spec))

    def remote(self, user, name: str) -> Path:
        return user.home / "bench" / name

    def clean(self) -> None:
        for user in (self.key_user, self.pw_user):
            for p in (user.home / "bench").iterdir():
                p.unlink()
        for p in self.workdir.glob("down-*"):
            p.unlink()
        subprocess.run(["sync"], check=False)

    def run(self) -> dict:
        args = self.args
        size = args.size_mb * MIB
        source = make_random_file(Path(args.data) / f"dest-{args.size_mb}m.bin", size)
        print(f"SFTP: {args.size_mb} MiB, loopback sshd on port {self.server.port}, {args.rounds} rounds", flush=True)
        sha = sha256_of(source)
        times: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        rss: dict[str, int] = {}
        vias: dict[str, str] = {}
        uploads = [("key", self.key_user), ("key-paramiko", self.key_user), ("password", self.pw_user)]
        for rnd in range(args.rounds):
            self.clean()
            for mode, user in uploads:
                self._sample(times, cpus, rss, "openssh-put", self.openssh(f'put "{source}" "bench/openssh.bin"'))
                self._check_remote(self.remote(self.key_user, "openssh.bin"), size, sha if rnd == 0 else None)
                wall, cpu, peak, report = self.panel(mode, "up", source, f"{mode}.bin", sha)
                self._sample(times, cpus, rss, mode, (wall, cpu, peak))
                vias[mode] = report["via"]
                self._check_remote(self.remote(user, f"{mode}.bin"), size, sha if rnd == 0 else None)
                subprocess.run(["sync"], check=False)
            # downloads of the key user's panel upload
            down_a, down_b = self.workdir / "down-openssh.bin", self.workdir / "down-panel.bin"
            self._sample(times, cpus, rss, "openssh-get", self.openssh(f'get "bench/key.bin" "{down_a}"'))
            wall, cpu, peak, _ = self.panel("key-paramiko", "down", down_b, "key.bin")
            self._sample(times, cpus, rss, "download", (wall, cpu, peak))
            for path in (down_a, down_b):
                if path.stat().st_size != size or (rnd == 0 and sha256_of(path) != sha):
                    fail(f"the downloaded {path.name} differs from the source")
            print(
                f"  round {rnd + 1}: " + ", ".join(f"{k} {size / v[-1] / 1e6:.0f} MB/s" for k, v in times.items() if v),
                flush=True,
            )
        # Memory with a smaller file: the peak must not grow with the size.
        small_size = args.small_mb * MIB
        small = make_random_file(Path(args.data) / f"dest-{args.small_mb}m.bin", small_size)
        small_sha = sha256_of(small)
        self.clean()
        growth = 0.0
        small_rss = {}
        for mode, _user in uploads:
            _w, _c, peak, _ = self.panel(mode, "up", small, f"small-{mode}.bin", small_sha)
            small_rss[mode] = peak
            growth = max(growth, (rss[mode] - peak) / 1024)
        _w, _c, peak, _ = self.panel("key-paramiko", "down", self.workdir / "down-small.bin", "small-key.bin")
        small_rss["download"] = peak
        growth = max(growth, (rss["download"] - peak) / 1024)
        self.clean()

        med = {k: median(v) for k, v in times.items()}
        up_ref, down_ref = med["openssh-put"], med["openssh-get"]
        ratio = {k: (down_ref if k in ("download", "openssh-get") else up_ref) / v for k, v in med.items()}
        faster = "openssh" if ratio["key"] >= ratio["key-paramiko"] else "paramiko"
        panel_rss = max(rss[m] for m in ("key", "key-paramiko", "password", "download")) / 1024
        notes = {
            "openssh-put": "sftp -b put, default settings",
            "key": f"key login, bulk via {vias.get('key')}",
            "key-paramiko": "key login, paramiko only",
            "password": "password login (paramiko)",
            "openssh-get": "sftp -b get",
            "download": "open() stream to a file",
        }
        rows = [
            Row(
                k,
                size / med[k] / 1e6,
                ratio[k],
                rss[k] / 1024,
                median(cpus[k]),
                notes[k] + (f"; {small_rss[k] / 1024:.0f} MB at {args.small_mb} MiB" if k in small_rss else ""),
            )
            for k in ("openssh-put", "key", "key-paramiko", "password", "openssh-get", "download")
        ]
        return {
            "sftp_up_ratio": round(max(ratio["key"], ratio["key-paramiko"]), 3),
            "sftp_up_ratio_password": round(ratio["password"], 3),
            "sftp_down_ratio": round(ratio["download"], 3),
            "sftp_peak_rss_mb": round(panel_rss, 1),
            "sftp_up_ratio_key_openssh": round(ratio["key"], 3),
            "sftp_up_ratio_key_paramiko": round(ratio["key-paramiko"], 3),
            "sftp_key_faster_mode": faster,
            "sftp_rss_growth_mb": round(growth, 1),
            "sftp_openssh_put_mb_s": round(size / up_ref / 1e6, 1),
            "sftp_openssh_get_mb_s": round(size / down_ref / 1e6, 1),
            "sftp_size_mb": args.size_mb,
            "sftp_rounds": args.rounds,
            "rows": rows,
        }

    @staticmethod
    def _sample(times, cpus, rss, name, sample) -> None:
        wall, cpu, peak = sample
        times.setdefault(name, []).append(wall)
        cpus.setdefault(name, []).append(cpu)
        rss[name] = max(rss.get(name, 0), peak)

    @staticmethod
    def _check_remote(path: Path, size: int, sha: str | None) -> None:
        if not path.exists() or path.stat().st_size != size:
            fail(f"{path.name} did not arrive complete")
        if sha is not None and sha256_of(path) != sha:
            fail(f"{path.name} arrived with another checksum")


def run_sftp(args: argparse.Namespace, workdir: Path) -> dict:
    from tests.sshd import SshdUnavailable, check_can_run

    try:
        check_can_run()
    except SshdUnavailable as exc:
        return {"rows": [Row("sftp", note=f"skipped: {exc}")]}
    if shutil.which("sftp") is None:
        return {"rows": [Row("sftp", note="skipped: OpenSSH's sftp client is not installed")]}
    bench = SftpBench(args, workdir)
    try:
        return bench.run()
    finally:
        bench.close()


# --------------------------------------------------------------------------- main
def load_sections() -> list:
    """The other kinds' sections that exist (``bench/dest_*.py``)."""
    sys.modules.setdefault("bench.destinations", sys.modules[__name__])
    modules = []
    for name in SECTIONS:
        path = BENCH_DIR / f"{name}.py"
        if not path.exists():
            continue
        spec = importlib.util.spec_from_file_location(f"bench.{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def parse_args(argv: list[str], sections: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant (default 3)")
    parser.add_argument("--size-mb", type=int, default=500, help="size of the test file in MiB (default 500)")
    parser.add_argument("--small-mb", type=int, default=100, help="the smaller file for the memory check (default 100)")
    parser.add_argument("--data", default=str(BENCH_DIR / "data" / "dest"), help="where test files are kept")
    parser.add_argument("--only", choices=["sftp", *[m.__name__.split(".")[-1] for m in sections]], action="append")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    for module in sections:
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        name, *rest = argv[1:]
        report = WORKERS[name](*rest)
        print(json.dumps({**report, "vmhwm_kib": vmhwm_kib()}), flush=True)
        return 0
    sections = load_sections()
    args = parse_args(argv, sections)
    runs = [("sftp", run_sftp)] + [(m.__name__.split(".")[-1], m.run) for m in sections]
    results: dict = {}
    missed = []
    for name, run in runs:
        if args.only and name not in args.only:
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"backupsite-bench-{name}-"))
        try:
            out = dict(run(args, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rows = [r if isinstance(r, Row) else Row(**r) for r in out.pop("rows", [])]
        print_table(name.upper().removeprefix("DEST_"), rows)
        results.update(out)
    for key, target in TARGETS.items():
        if key in results and results[key] < target:
            missed.append(f"{key} {results[key]:.0%} < {target:.0%}")
    if "sftp_peak_rss_mb" in results and results["sftp_peak_rss_mb"] > TARGET_RSS_MB:
        missed.append(f"sftp_peak_rss_mb {results['sftp_peak_rss_mb']} > {TARGET_RSS_MB}")
    print("\nTargets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if args.json:
        print(json.dumps(results, default=lambda o: asdict(o)))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
