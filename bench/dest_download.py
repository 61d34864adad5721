"""Benchmark a browser download through the panel against a plain static file server.

Run it with ``.venv/bin/python bench/dest_download.py`` (``--help`` lists the options;
``--json`` prints one JSON object last). ``bench/destinations.py`` imports :func:`run`
when it is there.

Method
------
* **File.** One ``--size-mb`` file (default 2048 MiB) of incompressible bytes (a 16 MiB
  random block repeated) is written once into ``WORKDIR``; it stays in the page cache
  (both sides read it from memory, so the disk is out of the comparison).
* **Panel.** A throw-away panel (its own data directory under ``WORKDIR``, SQLite,
  ``DEBUG=1`` for the generated development secrets) with a finished run whose local
  copy is that file, served by **gunicorn with the production flags** of the Dockerfile
  (2 workers, 4 threads). The client is ``curl`` with the session cookie of a logged-in
  operator: the request a browser makes when the Download button is pressed
  (``/runs/<id>/download/``), through login check, permission check and the download
  service (``jobs/downloads.py``).
* **Reference.** ``python -m http.server`` serving the same file, fetched by the same
  ``curl``.
* **From a destination.** The same file as a second run whose local copy is gone and
  whose only copy is at a "server hard drive" destination, so the panel streams it
  through the destination contract (``Backend.open``, 1 MiB reads) instead of handing
  the file to gunicorn's ``sendfile``: ``download_dest_ratio``.
* **Timing.** ``--rounds`` rounds, each fetching reference, panel, panel-from-destination
  in turn (so the noise of a shared machine falls on all of them); curl's own
  ``speed_download`` is used and the medians compared. Every fetch must answer 200 with
  the whole size; the first panel download and the first destination download are also
  hashed (untimed) and must match the file's SHA-256.
* **Memory.** The peak RSS (``VmHWM``) of each gunicorn worker after all rounds, and its
  RSS before the first download: ``download_peak_rss_mb`` is the highest peak and
  ``download_rss_growth_mb`` the largest growth. Constant memory means the growth is a
  few MiB however large the file (compare ``--size-mb 512`` with the default).

Targets (issue 7): ``download_ratio`` >= 0.8, in constant memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
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
JOB_SLUG = "bench-download"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def make_file(path: Path, size: int) -> str:
    """Write *size* incompressible bytes (unless the file is already there) and return
    their SHA-256."""
    marker = path.with_suffix(".sha256")
    if path.is_file() and path.stat().st_size == size and marker.is_file():
        return marker.read_text().strip()
    block = os.urandom(16 * MIB)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            part = block[: min(len(block), left)]
            out.write(part)
            digest.update(part)
            left -= len(part)
    marker.write_text(digest.hexdigest())
    return digest.hexdigest()


def panel_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "BACKUPSITE_ENV_FILE": "",
            "BACKUPSITE_DATA_DIR": str(workdir / "data"),
            "DJANGO_SETTINGS_MODULE": "backupsite.settings",
            "DEBUG": "1",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "BACKUPSITE_LOCAL_ROOTS": str(workdir / "destination"),
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO_DIR),
        }
    )
    return env


SETUP = r"""
import hashlib, os, shutil, sys
from pathlib import Path
import django
django.setup()
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from destinations.models import Destination
from jobs.models import Run, Upload

source, size, sha, slug = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
name = source.name
local = settings.BACKUPSITE_ARCHIVE_DIR / slug / name
local.parent.mkdir(parents=True, exist_ok=True)
if not local.exists():
    os.link(source, local)
remote_dir = Path(settings.BACKUPSITE_LOCAL_ROOTS[0]) / "backupsite" / slug
remote_dir.mkdir(parents=True, exist_ok=True)
remote = remote_dir / name
if not remote.exists():
    os.link(source, remote)
user, _ = User.objects.get_or_create(username="bench-operator")
user.groups.add(Group.objects.get(name="operators"))
dest, _ = Destination.objects.get_or_create(
    name="Bench disk", defaults={"kind": "local", "settings": {"path": settings.BACKUPSITE_LOCAL_ROOTS[0]}}
)
common = dict(job_name="Bench", config={"job": {"slug": slug, "name": "Bench"}}, state="succeeded",
              archive_name=name, archive_size=size, archive_sha256=sha)
local_run = Run.objects.create(local_path=f"{slug}/{name}", **common)
remote_run = Run.objects.create(local_path=f"{slug}/gone-{name}", **common)
Upload.objects.create(run=remote_run, destination=dest, destination_name=dest.name, state="succeeded",
                      remote_name=name)
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print(session.session_key, local_run.pk, remote_run.pk)
"""


def setup_panel(workdir: Path, file: Path, size: int, sha: str) -> tuple[str, int, int]:
    env = panel_env(workdir)
    (workdir / "destination").mkdir(exist_ok=True)
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO_DIR, env=env, check=True)
    out = subprocess.run(
        [python, "-c", SETUP, str(file), str(size), sha, JOB_SLUG],
        cwd=REPO_DIR,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[-3], int(out[-2]), int(out[-1])


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


def curl(url: str, cookie: str | None = None) -> dict:
    """Fetch *url* into /dev/null; curl's status, size and average speed (bytes/s)."""
    args = ["curl", "-s", "-S", "--noproxy", "*", "-w", "%{http_code} %{size_download} %{speed_download}"]
    if cookie:
        args += ["-b", f"sessionid={cookie}"]
    proc = subprocess.run([*args, "-o", "/dev/null", url], capture_output=True, text=True, check=False)
    code, size, speed = proc.stdout.split()
    return {"code": int(code), "size": int(size), "speed": float(speed)}


def fetch_sha(url: str, cookie: str) -> str:
    proc = subprocess.Popen(
        ["curl", "-s", "-S", "--noproxy", "*", "-f", "-b", f"sessionid={cookie}", "-o", "-", url],
        stdout=subprocess.PIPE,
    )
    digest = hashlib.sha256()
    while chunk := proc.stdout.read(4 * MIB):
        digest.update(chunk)
    if proc.wait() != 0:
        raise RuntimeError(f"curl failed for {url}")
    return digest.hexdigest()


def run(args, workdir: Path) -> dict:
    """Measure and return the figures (see the module docstring); *args* needs
    ``size_mb`` and ``rounds`` (an argparse namespace or any object with them)."""
    if shutil.which("curl") is None:
        raise RuntimeError("curl is not installed")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    size = int(getattr(args, "size_mb", 2048)) * MIB
    rounds = int(getattr(args, "rounds", 3))
    file = workdir / "bench-download.tar.zst"
    print(f"File: {size / MIB:,.0f} MiB at {file}", flush=True)
    sha = make_file(file, size)
    cookie, local_run, remote_run = setup_panel(workdir, file, size, sha)

    panel_port, ref_port = free_port(), free_port()
    env = panel_env(workdir)
    gunicorn = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "backupsite.wsgi:application",
            "--bind", f"127.0.0.1:{panel_port}", "--workers", "2", "--threads", "4",
            "--timeout", "120", "--graceful-timeout", "30", "--keep-alive", "5",
            "--log-level", "warning",
        ],
        cwd=REPO_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    static = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(ref_port), "--bind", "127.0.0.1", "--directory", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(panel_port, gunicorn, "gunicorn")
        wait_port(ref_port, static, "http.server")
        base = f"http://127.0.0.1:{panel_port}"
        urls = {
            "reference": (f"http://127.0.0.1:{ref_port}/{file.name}", None),
            "panel": (f"{base}/runs/{local_run}/download/", cookie),
            "destination": (f"{base}/runs/{remote_run}/download/", cookie),
        }
        # warm-up (untimed): page cache, Python imports in both workers, and a first
        # hashed download of each panel variant: byte-identical or stop
        for name in ("panel", "destination"):
            got = fetch_sha(*urls[name])
            if got != sha:
                raise RuntimeError(f"the {name} download is not byte-identical ({got} != {sha})")
        curl(*urls["reference"])
        workers = children(gunicorn.pid)
        rss_before = {pid: status_kib(pid, "VmRSS") for pid in workers}
        speeds: dict[str, list[float]] = {name: [] for name in urls}
        for round_no in range(1, rounds + 1):
            for name, (url, cookie_) in urls.items():
                sample = curl(url, cookie_)
                if sample["code"] != 200 or sample["size"] != size:
                    raise RuntimeError(f"{name}: HTTP {sample['code']}, {sample['size']} of {size} bytes")
                speeds[name].append(sample["speed"])
                print(f"  round {round_no}/{rounds} {name:<12} {sample['speed'] / 1e6:8.0f} MB/s", flush=True)
        peaks = {pid: status_kib(pid, "VmHWM") for pid in workers}
    finally:
        for proc in (gunicorn, static):
            proc.send_signal(signal.SIGTERM)
        for proc in (gunicorn, static):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    median = {name: statistics.median(values) for name, values in speeds.items()}
    result = {
        "download_ratio": round(median["panel"] / median["reference"], 3),
        "download_dest_ratio": round(median["destination"] / median["reference"], 3),
        "download_mb_s": round(median["panel"] / 1e6, 1),
        "download_dest_mb_s": round(median["destination"] / 1e6, 1),
        "download_reference_mb_s": round(median["reference"] / 1e6, 1),
        "download_peak_rss_mb": round(max(peaks.values()) / 1024, 1),
        "download_rss_growth_mb": round(max(peaks[p] - rss_before[p] for p in peaks) / 1024, 1),
        "download_size_mb": size // MIB,
        "download_rounds": rounds,
    }
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="file size in MiB (default 2048)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--workdir", type=Path, help="where the file and the panel's data go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if download_ratio < {TARGET_RATIO}")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="backupsite-bench-download-"))
    try:
        result = run(args, workdir)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    local, dest = result["download_mb_s"], result["download_dest_mb_s"]
    print(f"panel (local copy)      {local:8.0f} MB/s   ratio {result['download_ratio']:.2f}")
    print(f"panel (destination)     {dest:8.0f} MB/s   ratio {result['download_dest_ratio']:.2f}")
    print(f"python -m http.server   {result['download_reference_mb_s']:8.0f} MB/s")
    print(
        f"gunicorn worker peak RSS {result['download_peak_rss_mb']:.1f} MiB "
        f"(grew {result['download_rss_growth_mb']:.1f} MiB while serving {result['download_size_mb']} MiB files)"
    )
    if args.json:
        print(json.dumps(result))
    if args.check and result["download_ratio"] < TARGET_RATIO:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
