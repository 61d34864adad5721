"""Benchmark the panel's archive step against ``tar -cf - DIR | zstd -T0 -3 > out``.

Run it with ``.venv/bin/python bench/archive.py`` (or ``make bench``); ``--help`` lists the options.

Method
------
* **Data set.** A deterministic tree (seeded RNG) is generated once into ``bench/data/tree/``
  and reused while its marker file says it was made with the same parameters. At
  ``--size-factor 1`` it holds 1.10 GiB in 20,022 files: 20,000 small text files
  (1–50 KiB) in nested directories, 20 medium files (half random bytes, half text), one
  200 MiB text file and one 200 MiB random file. Text files are slices of a 48 MiB corpus of
  pseudo-words (compresses about 2.8x at level 3; repeats are further apart than zstd's
  window). Random bytes are about 27% of the total: with this many text files, a
  half-random tree would need far bigger random files.
  ``--size-factor F`` scales the number of small and medium files and the size of the two
  big files; other factors use their own tree (``tree-x0.1/`` and so on).
* **Variants.** ``reference`` is the tar | zstd pipeline; ``panel`` is the engine in
  ``jobs/engine`` exactly as ``jobs.services._execute`` uses it: ``walk_directory`` →
  ``write_archive`` (level 3, all cores) with a members file → ``write_manifest``. The panel
  runs in its own Python process. Each variant writes ``<variant>.*`` files in ``bench/data/out/``.
* **Timing.** One untimed warm-up run of the reference reads the whole tree into the page
  cache (caches cannot be dropped without root), so every timed run reads from memory.
  Timed runs alternate reference, panel, reference, panel … (``--repeat`` rounds), which
  spreads the noise of a shared machine over both; the table shows the median wall time of
  each variant and the ratio of the medians. Wall time is measured around the whole child
  process(es), interpreter start included. Outputs of the previous run are deleted and the
  disk is ``sync``-ed, untimed, before each run.
* **Memory.** Peak RSS is the kernel's per-process high-water mark, ``VmHWM`` in
  ``/proc/PID/status``: the panel's worker reads its own just before exiting (exact, zstd
  worker threads included); the commands of the pipeline are polled every 10 ms while they
  run. For the pipeline the peak of its biggest process (zstd) is reported. The maximum over
  the runs is shown. ``ru_maxrss`` from ``wait4``/``getrusage(RUSAGE_CHILDREN)`` is *not*
  used: Linux carries the pre-exec peak over into it, and ``subprocess`` starts children
  with vfork, so every child would report at least this process's own peak RSS (about
  300 MiB after generating the data set, 10 MiB even for ``true``). CPU seconds
  (user + system, from ``wait4``) are shown too: on a small machine they explain a lot.
* **Validity.** The panel's last archive is listed with ``zstd -dc | tar -tf -``; the member
  count must equal the files + directories + symlinks the engine reported and the entries
  in the tree, its sha256 must match the one the engine computed, and the manifest must
  load and list every member. Any mismatch stops the benchmark with exit status 2.

Exit status: 0 normally; with ``--check``, 1 if a target (archive ratio <= 1.5, panel peak
RSS <= 150 MiB) is missed; 2 if the panel's output is broken or a command fails.

Adding a variant (encrypted, restic, borg, verify, ...): write a ``run_<name>(ctx)`` function
returning a :class:`Sample` (use :func:`run_pipeline` for external commands, or a
``worker_<name>`` function plus :func:`run_worker` for Python code that must run in its own
process), and register it in :data:`VARIANTS` (and :data:`WORKERS`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Run as a script, this folder comes first on sys.path, and bench/destinations.py would
# shadow the destinations package: the repository first, this folder not at all.
sys.path[:] = [str(REPO_DIR)] + [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
DEFAULT_DATA = BENCH_DIR / "data"

KIB = 1 << 10
MIB = 1 << 20
ZSTD_LEVEL = 3
# Targets of the engine issue: unencrypted <= 1.15x the reference, encrypted <= 1.3x,
# faster than restic and borg, peak RSS <= 120 MiB (unchanged when the tree doubles).
TARGET_RATIO = 1.15
TARGET_RATIO_ENCRYPTED = 1.3
TARGET_RSS_MIB = 120
BENCH_PASSWORD = "benchmark-password-not-a-secret"  # noqa: S105 - throw-away repositories

# The data set at --size-factor 1 (1.10 GiB in 20,022 files).
SEED = 20_251_109
TREE_FORMAT = 1  # bump when the generator changes, so old trees are regenerated
SMALL_FILES = 20_000
SMALL_SIZE = (1 * KIB, 50 * KIB)
SMALL_PER_DIR = 50
MEDIUM_FILES = 20
MEDIUM_SIZE = (6 * MIB, 16 * MIB)
BIG_SIZE = 200 * MIB
# Markers next to the tree (not in it, so they are not archived): "<tree>.json" is written
# last and describes a complete tree; "<tree>.generating" is written first, removed last.


# --------------------------------------------------------------------------- data set


def _text_corpus(rng: random.Random, size: int) -> bytes:
    """About *size* bytes of newline-separated pseudo-text without long-range repeats."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [13, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(20_000)]
    vocab += ["the", "of", "and", "to", "in", "is", "for", "=", "{", "}", "return", "0", "1", "None"] * 200
    words = rng.choices(vocab, k=size // 6)
    lines = [" ".join(words[i : i + rng.randint(3, 16)]) for i in range(0, len(words), 9)]
    return "\n".join(lines).encode()[:size]


def _write_text(path: Path, corpus: bytes, rng: random.Random, size: int) -> None:
    """Write *size* bytes made of random slices of *corpus*."""
    view = memoryview(corpus)
    with open(path, "wb") as fh:
        while size > 0:
            n = min(size, rng.randint(64 * KIB, 1 * MIB), len(corpus))
            start = rng.randrange(len(corpus) - n + 1)
            fh.write(view[start : start + n])
            size -= n


def _write_random(path: Path, rng: random.Random, size: int) -> None:
    with open(path, "wb") as fh:
        while size > 0:
            n = min(size, 4 * MIB)
            fh.write(rng.randbytes(n))
            size -= n


def tree_spec(factor: float) -> dict:
    return {
        "format": TREE_FORMAT,
        "seed": SEED,
        "size_factor": factor,
        "small_files": max(1, round(SMALL_FILES * factor)),
        "medium_files": max(2, round(MEDIUM_FILES * factor)),
        "big_size": max(1 * MIB, round(BIG_SIZE * factor)),
    }


def generate_tree(tree: Path, spec: dict) -> dict:
    """Create the data set described by *spec* in the (new or empty) directory *tree*."""
    rng = random.Random(spec["seed"])
    tree.mkdir(parents=True, exist_ok=True)
    _marker(tree, "generating").touch()
    corpus = _text_corpus(rng, 48 * MIB)
    files = total = 0

    # Small text files, SMALL_PER_DIR to a leaf directory, three levels deep: src/dNN/dN/dN/.
    src = tree / "src"
    view = memoryview(corpus)
    for i in range(spec["small_files"]):
        leaf = i // SMALL_PER_DIR
        directory = src / f"d{leaf // 64:02d}" / f"d{leaf // 8 % 8}" / f"d{leaf % 8}"
        if i % SMALL_PER_DIR == 0:
            directory.mkdir(parents=True)
        size = rng.randint(*SMALL_SIZE)
        start = rng.randrange(len(corpus) - size)
        (directory / f"file_{i:05d}.txt").write_bytes(view[start : start + size])
        files += 1
        total += size

    # Medium files: even ones random bytes, odd ones text.
    media = tree / "media"
    media.mkdir()
    for i in range(spec["medium_files"]):
        size = rng.randint(*MEDIUM_SIZE)
        if i % 2 == 0:
            _write_random(media / f"blob_{i:02d}.bin", rng, size)
        else:
            _write_text(media / f"notes_{i:02d}.txt", corpus, rng, size)
        files += 1
        total += size

    big = tree / "big"
    big.mkdir()
    _write_text(big / "big.log", corpus, rng, spec["big_size"])
    _write_random(big / "big.bin", rng, spec["big_size"])
    files += 2
    total += 2 * spec["big_size"]

    stats = {"files": files, "bytes": total}
    _marker(tree, "json").write_text(json.dumps({**spec, **stats}, indent=1) + "\n")
    _marker(tree, "generating").unlink()
    return stats


def _marker(tree: Path, suffix: str) -> Path:
    return tree.with_name(f"{tree.name}.{suffix}")


def ensure_tree(tree: Path, spec: dict) -> tuple[dict, float | None]:
    """Reuse *tree* if it was generated from *spec*, else (re)generate it.

    Returns the tree's stats and the generation time (None if it was reused).
    """
    marker, generating = _marker(tree, "json"), _marker(tree, "generating")
    if generating.exists():
        print(f"{tree}: incomplete (interrupted generation), regenerating", flush=True)
        shutil.rmtree(tree, ignore_errors=True)
        marker.unlink(missing_ok=True)
    elif marker.exists():
        stats = json.loads(marker.read_text())
        if {k: stats.get(k) for k in spec} == spec and tree.is_dir():
            return stats, None
        print(f"{tree}: made with other parameters, regenerating", flush=True)
        shutil.rmtree(tree, ignore_errors=True)
        marker.unlink()
    elif tree.exists() and any(tree.iterdir()):
        sys.exit(f"{tree} exists, is not empty and was not made by this benchmark; use --tree to archive it as is")
    print(f"Generating the data set in {tree} (size factor {spec['size_factor']:g}) ...", flush=True)
    start = time.perf_counter()
    stats = generate_tree(tree, spec)
    os.sync()
    elapsed = time.perf_counter() - start
    print(f"  {stats['files']:,} files, {stats['bytes'] / MIB:,.1f} MiB in {elapsed:.1f} s", flush=True)
    return stats, elapsed


def count_tree(tree: Path) -> tuple[int, int, int]:
    """Return (entries, files, bytes) of *tree*; entries are regular files, dirs (the root too) and symlinks."""
    entries, files, total = 1, 0, 0
    stack = [str(tree)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for child in it:
                if child.is_dir(follow_symlinks=False):
                    stack.append(child.path)
                elif child.is_file(follow_symlinks=False):
                    files += 1
                    total += child.stat(follow_symlinks=False).st_size
                elif not child.is_symlink():
                    continue  # sockets, FIFOs, devices: the panel skips them
                entries += 1
    return entries, files, total


# --------------------------------------------------------------------------- processes


@dataclass
class ProcResult:
    name: str
    returncode: int
    peak_kib: int  # peak RSS (VmHWM) of this process
    cpu: float  # user + system seconds


def vmhwm_kib(pid: int | str = "self") -> int:
    """The kernel's high-water mark of the process's RSS (VmHWM), 0 if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class PeakSampler(threading.Thread):
    """Poll VmHWM of some processes until stopped; ``peaks`` maps pid to the largest value seen.

    VmHWM only grows, so the only loss is growth in the last interval before a process exits.
    """

    def __init__(self, pids: list[int], interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.peaks = dict.fromkeys(pids, 0)
        self.interval = interval
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            for pid, peak in self.peaks.items():
                self.peaks[pid] = max(peak, vmhwm_kib(pid))
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_pipeline(
    argvs: list[list[str]],
    *,
    stdout_path: Path | None = None,
    cwd: Path | None = None,
    consume: Callable[[bytes], None] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[float, list[ProcResult]]:
    """Run ``argv0 | argv1 | ...`` without a shell; return (wall seconds, per-process results).

    The last command writes to *stdout_path*, or its output is passed chunk by chunk to *consume*.
    A command that fails stops the benchmark.
    """
    out = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115 - closed below
    procs: list[subprocess.Popen] = []
    sampler = None
    start = time.perf_counter()
    try:
        prev = None
        for i, argv in enumerate(argvs):
            last = i == len(argvs) - 1
            stdout = (out if out else subprocess.PIPE) if last else subprocess.PIPE
            # Popen returns once the child has exec'd, so VmHWM is the new program's from here on.
            proc = subprocess.Popen(argv, stdin=prev, stdout=stdout, cwd=cwd, env=env)
            if prev is not None:
                prev.close()  # only the next process holds the read end
            prev = proc.stdout
            procs.append(proc)
        sampler = PeakSampler([p.pid for p in procs])
        sampler.start()
        if prev is not None:
            while chunk := prev.read(MIB):
                if consume:
                    consume(chunk)
            prev.close()
        for p in procs:  # wait for the exits but leave zombies, so no pid is reused while sampling
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - start
        sampler.stop()
        results = []
        for p, argv in zip(procs, argvs, strict=True):
            _pid, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
            results.append(ProcResult(Path(argv[0]).name, p.returncode, sampler.peaks[p.pid], cpu))
    finally:
        if out:
            out.close()
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
        if sampler is not None:
            sampler.stop()
    for r, argv in zip(results, argvs, strict=True):
        if r.returncode != 0:
            fail(f"command failed with status {r.returncode}: {' '.join(argv)}")
    return wall, results


def run_worker(name: str, *args: str) -> tuple[float, ProcResult, dict]:
    """Run ``WORKERS[name](*args)`` in a new Python process; return (wall, its usage, its JSON report).

    The worker reports its own VmHWM just before it exits, which is exact; it replaces the sampled one.
    """
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, *args]
    report = bytearray()
    wall, (proc,) = run_pipeline([argv], consume=report.extend)
    info = json.loads(report)
    proc.name = "python"
    proc.peak_kib = max(proc.peak_kib, info["vmhwm_kib"])
    return wall, proc, info


def fail(message: str) -> None:
    print(f"\nFAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# --------------------------------------------------------------------------- variants


@dataclass
class Context:
    tree: Path
    out_dir: Path
    threads: int = 0  # 0 = all cores, like zstd -T0


@dataclass
class Sample:
    wall: float
    cpu: float  # user + system seconds of all processes
    rss_kib: int  # peak RSS of the biggest process
    rss_proc: str  # ... and which process that was
    out_bytes: int
    info: dict = field(default_factory=dict)


def _sample(wall: float, procs: list[ProcResult], out_bytes: int, info: dict | None = None) -> Sample:
    biggest = max(procs, key=lambda p: p.peak_kib)
    return Sample(wall, sum(p.cpu for p in procs), biggest.peak_kib, biggest.name, out_bytes, info or {})


def run_reference(ctx: Context) -> Sample:
    out = ctx.out_dir / "reference.tar.zst"
    wall, procs = run_pipeline(
        [["tar", "-cf", "-", ctx.tree.name], ["zstd", f"-T{ctx.threads}", f"-{ZSTD_LEVEL}", "-q"]],
        stdout_path=out,
        cwd=ctx.tree.parent,
    )
    return _sample(wall, procs, out.stat().st_size, {"archive": str(out)})


def run_panel(ctx: Context) -> Sample:
    out = ctx.out_dir / "panel.tar.zst"
    wall, proc, report = run_worker("panel", str(ctx.tree), str(out))
    return _sample(wall, [proc], out.stat().st_size, report)


def run_panel_age(ctx: Context) -> Sample:
    out = ctx.out_dir / "panel-age.tar.zst.age"
    wall, proc, report = run_worker("panel", str(ctx.tree), str(out), "encrypt")
    return _sample(wall, [proc], out.stat().st_size, report)


def _tool_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HOME": str(Path(os.environ.get("HOME", "/tmp"))), **extra}


def run_restic(ctx: Context) -> Sample:
    """``restic backup`` of the tree into a fresh repository (created untimed)."""
    repo = ctx.out_dir / "restic.repo"
    shutil.rmtree(repo, ignore_errors=True)
    env = _tool_env(RESTIC_PASSWORD=BENCH_PASSWORD, RESTIC_REPOSITORY=str(repo), RESTIC_CACHE_DIR=str(repo) + "-cache")
    subprocess.run(["restic", "init", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
    wall, procs = run_pipeline([["restic", "backup", "-q", ctx.tree.name]], cwd=ctx.tree.parent, env=env)
    size = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(str(repo) + "-cache", ignore_errors=True)
    return _sample(wall, procs, size)


def run_borg(ctx: Context) -> Sample:
    """``borg create --compression zstd,3`` of the tree into a fresh repokey repository."""
    repo = ctx.out_dir / "borg.repo"
    shutil.rmtree(repo, ignore_errors=True)
    env = _tool_env(
        BORG_PASSPHRASE=BENCH_PASSWORD,
        BORG_BASE_DIR=str(ctx.out_dir / "borg.base"),
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
    )
    subprocess.run(["borg", "init", "--encryption=repokey", str(repo)], env=env, check=True, capture_output=True)
    wall, procs = run_pipeline(
        [["borg", "create", "--compression", f"zstd,{ZSTD_LEVEL}", f"{repo}::bench", ctx.tree.name]],
        cwd=ctx.tree.parent,
        env=env,
    )
    size = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(ctx.out_dir / "borg.base", ignore_errors=True)
    return _sample(wall, procs, size)


def run_verify_reference(ctx: Context) -> Sample:
    """``zstd -d | tar -t`` plus ``sha256sum`` of the panel's archive of this round."""
    archive = ctx.out_dir / "panel.tar.zst"
    wall1, procs1 = run_pipeline([["zstd", "-dc", "-q", str(archive)], ["tar", "-tf", "-"]], consume=lambda _: None)
    wall2, procs2 = run_pipeline([["sha256sum", str(archive)]], consume=lambda _: None)
    return _sample(wall1 + wall2, procs1 + procs2, archive.stat().st_size)


def run_verify(ctx: Context) -> Sample:
    """The panel's verify (sha256 of the stored file, zstd, tar, sha256 of every member
    against the manifest) of the panel's archive of this round."""
    archive = ctx.out_dir / "panel.tar.zst"
    wall, proc, report = run_worker("verify", str(archive), str(archive) + ".manifest.json")
    if not report["ok"]:
        fail(f"verify found problems in a good archive: {report['problems'][:3]}")
    return _sample(wall, [proc], archive.stat().st_size, report)


def worker_verify(archive: str, manifest_path: str) -> dict:
    sys.path.insert(0, str(REPO_DIR))
    from jobs.engine.verify import verify_archive

    with open(manifest_path) as fh:
        manifest = json.load(fh)
    with open(archive, "rb") as stream:
        result = verify_archive(stream, manifest)
    return {"ok": result.ok, "problems": result.problems, "members": result.members_checked}


def worker_panel(tree: str, out_path: str, encrypt: str = "") -> dict:
    """The panel's archive step, as in ``jobs.services._execute`` (without Django and fsync)."""
    sys.path.insert(0, str(REPO_DIR))
    from jobs.engine import walk_directory, write_archive, write_manifest

    recipients = None
    if encrypt:
        from jobs.engine.agekeys import new_identity

        recipients = [new_identity()[1]]
    start = time.perf_counter()
    members_path = out_path + ".members.jsonl"
    manifest_path = out_path + ".manifest.json"
    with open(members_path, "w+") as members:
        with open(out_path, "wb") as out:
            result = write_archive(
                walk_directory(tree, "tree"), out, members_out=members, level=ZSTD_LEVEL, recipients=recipients
            )
        archived = time.perf_counter()
        members.seek(0)
        header = {
            "tool": {"name": "backupsite", "version": "bench"},
            "job": {"name": "Benchmark", "slug": "bench"},
            "run": 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sources": [{"name": "tree", "slug": "tree", "kind": "directory"}],
            "archive": {
                "name": os.path.basename(out_path),
                "size": result.size,
                "sha256": result.sha256,
                "compression": "zstd",
                "encryption": {"scheme": "age", "recipient": recipients[0]} if recipients else None,
            },
            "file_count": result.file_count,
        }
        with open(manifest_path, "w") as fh:
            write_manifest(fh, header, members)
    os.unlink(members_path)
    done = time.perf_counter()
    return {
        "archive": out_path,
        "manifest": manifest_path,
        "sha256": result.sha256,
        "size": result.size,
        "files": result.file_count,
        "dirs": result.dir_count,
        "symlinks": result.symlink_count,
        "input_bytes": result.input_bytes,
        "warnings": result.warning_count,
        "archive_s": archived - start,
        "manifest_s": done - archived,
    }


# The variants in the order they run in each round; the first one is the baseline of the ratios.
VARIANTS: dict[str, Callable[[Context], Sample]] = {
    "reference": run_reference,
    "panel": run_panel,
    "panel-age": run_panel_age,
    "restic": run_restic,
    "borg": run_borg,
    # Verify variants read the panel's archive of the same round (run after "panel").
    "verify-reference": run_verify_reference,
    "verify": run_verify,
}
# Programs a variant needs; a variant whose program is missing is left out (and said so).
NEEDS = {"restic": "restic", "borg": "borg"}
# Python code run in a separate process by run_worker(); each returns a JSON-able report.
WORKERS: dict[str, Callable[..., dict]] = {
    "panel": worker_panel,
    "verify": worker_verify,
}


# --------------------------------------------------------------------------- checks and report


def verify_panel(sample: Sample, tree_entries: int) -> str:
    """Check the panel's archive and manifest with stock tools; stop the benchmark if broken."""
    info = sample.info
    archive = info["archive"]
    lines = 0

    def count(chunk: bytes) -> None:
        nonlocal lines
        lines += chunk.count(b"\n")

    run_pipeline([["zstd", "-dc", "-q", archive], ["tar", "-tf", "-"]], consume=count)
    expected = info["files"] + info["dirs"] + info["symlinks"]
    if lines != expected or lines != tree_entries:
        fail(f"panel archive lists {lines} members; the engine reported {expected}, the tree has {tree_entries}")
    digest = hashlib.sha256()
    with open(archive, "rb") as fh:
        while chunk := fh.read(4 * MIB):
            digest.update(chunk)
    if digest.hexdigest() != info["sha256"] or os.path.getsize(archive) != info["size"]:
        fail("panel archive's sha256 or size differs from what the engine reported")
    with open(info["manifest"]) as fh:
        manifest = json.load(fh)
    if len(manifest["members"]) != expected or manifest["archive"]["sha256"] != info["sha256"]:
        fail(f"manifest lists {len(manifest['members'])} members, expected {expected}, or has a wrong sha256")
    if info["warnings"]:
        fail(f"the engine reported {info['warnings']} warnings")
    return (
        f"panel archive OK: zstd -dc | tar -tf - lists {lines:,} members = {info['files']:,} files + "
        f"{info['dirs']:,} dirs + {info['symlinks']} symlinks (tree: {tree_entries:,}); sha256 and manifest match"
    )


def clear_outputs(out_dir: Path, variant: str = "") -> None:
    """Delete the outputs of *variant* (files named ``<variant>.*``), or all, and flush the disk."""
    for child in out_dir.glob(f"{variant}.*" if variant else "*"):
        child.unlink()
    os.sync()


def print_table(results: dict[str, list[Sample]]) -> dict[str, tuple[float, float]]:
    """Print the table; return {variant: (ratio, peak RSS MiB)}."""
    base = statistics.median(s.wall for s in next(iter(results.values())))
    header = (
        f"{'variant':<16} {'median s':>9} {'ratio':>6} {'CPU s':>7} {'peak RSS MiB':>18} {'output MiB':>11}  runs (s)"
    )
    print(header)
    print("-" * len(header))
    figures = {}
    for name, samples in results.items():
        wall = statistics.median(s.wall for s in samples)
        cpu = statistics.median(s.cpu for s in samples)
        peak = max(samples, key=lambda s: s.rss_kib)
        runs = " ".join(f"{s.wall:.2f}" for s in samples)
        rss_text = f"{peak.rss_proc} {peak.rss_kib / KIB:.1f}"
        print(
            f"{name:<16} {wall:>9.2f} {wall / base:>6.2f} {cpu:>7.1f} {rss_text:>18}"
            f" {samples[-1].out_bytes / MIB:>11.1f}  {runs}"
        )
        figures[name] = (wall / base, peak.rss_kib / KIB)
    return figures


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--size-factor",
        type=float,
        default=1.0,
        metavar="F",
        help="scale the data set (0.1 for a quick run, 2 for a doubled tree; default 1)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        metavar="DIR",
        help="where the generated tree and the outputs live (default bench/data)",
    )
    parser.add_argument(
        "--tree", type=Path, metavar="DIR", help="archive this existing directory instead of the generated data set"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="N", help="timed rounds, each running every variant once (default 3)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the last output of each variant in DIR/out")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        metavar="LIST",
        help=f"comma-separated variants to run, reference first (default: {','.join(VARIANTS)})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a target is missed (ratios, peak RSS, faster than restic and borg)",
    )
    args = parser.parse_args(argv)
    if args.size_factor <= 0 or args.repeat < 1:
        parser.error("--size-factor must be > 0 and --repeat >= 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            fail(f"{tool} is not installed")

    data = args.data.resolve()
    gen_time = None
    if args.tree:
        tree = args.tree.resolve()
    else:
        name = "tree" if args.size_factor == 1 else f"tree-x{args.size_factor:g}"
        tree = data / name
        _stats, gen_time = ensure_tree(tree, tree_spec(args.size_factor))
    entries, files, total = count_tree(tree)
    print(
        f"Tree {tree}: {files:,} files, {entries - files:,} dirs and symlinks, "
        f"{total / MIB:,.1f} MiB ({total / (1 << 30):.2f} GiB)"
    )
    print(f"zstd level {ZSTD_LEVEL}, all cores ({os.cpu_count()}), {args.repeat} round(s), reference first")

    out_dir = data / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(out_dir)
    ctx = Context(tree=tree, out_dir=out_dir)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(wanted) - set(VARIANTS)
    if unknown or not wanted or wanted[0] != "reference" or "panel" not in wanted:
        fail(f"--variants must start with reference and include panel; unknown: {sorted(unknown)}")
    for name in list(wanted):
        if name in NEEDS and shutil.which(NEEDS[name]) is None:
            print(f"({name} left out: {NEEDS[name]} is not installed)")
            wanted.remove(name)
    variants = {name: VARIANTS[name] for name in wanted}
    results: dict[str, list[Sample]] = {name: [] for name in variants}
    try:
        print("Warm-up (untimed): reference ...", flush=True)
        warm = run_reference(ctx)
        print(f"  {warm.wall:.2f} s", flush=True)
        for round_no in range(1, args.repeat + 1):
            for name, run in variants.items():
                clear_outputs(out_dir, name)
                sample = run(ctx)
                results[name].append(sample)
                print(
                    f"  round {round_no}/{args.repeat} {name:<10} {sample.wall:7.2f} s  "
                    f"{sample.rss_proc} {sample.rss_kib / KIB:.1f} MiB",
                    flush=True,
                )
        # The outputs of the last round are still there: check the panel's.
        verdict = verify_panel(results["panel"][-1], entries)
        panel = results["panel"][-1].info
        print()
        figures = print_table(results)
        print(f"\n{verdict}")
        archive_s = statistics.median(s.info["archive_s"] for s in results["panel"])
        manifest_s = statistics.median(s.info["manifest_s"] for s in results["panel"])
        print(
            f"panel, timed inside its process (medians): archive {archive_s:.2f} s + manifest {manifest_s:.2f} s;"
            f" {panel['input_bytes'] / MIB:,.1f} MiB read"
        )
        if gen_time is not None:
            print(f"data generation {gen_time:.1f} s; ", end="")
        print(f"whole benchmark {time.perf_counter() - started:.1f} s")
    finally:
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)

    checks = []
    ratio, rss = figures["panel"]
    checks.append((f"archive ratio {ratio:.2f} (target <= {TARGET_RATIO})", ratio <= TARGET_RATIO))
    checks.append((f"panel peak RSS {rss:.0f} MiB (target <= {TARGET_RSS_MIB} MiB)", rss <= TARGET_RSS_MIB))
    if "panel-age" in figures:
        enc, enc_rss = figures["panel-age"]
        checks.append(
            (f"encrypted ratio {enc:.2f} (target <= {TARGET_RATIO_ENCRYPTED})", enc <= TARGET_RATIO_ENCRYPTED)
        )
        checks.append((f"encrypted peak RSS {enc_rss:.0f} MiB", enc_rss <= TARGET_RSS_MIB))
    if "verify" in figures and "verify-reference" in figures:
        # Throughput ratio = reference time / verify time (same archive).
        throughput = figures["verify-reference"][0] / figures["verify"][0]
        checks.append(
            (f"verify throughput {throughput:.0%} of zstd -d | tar -t + sha256sum (target >= 80%)", throughput >= 0.8)
        )
    for other in ("restic", "borg"):
        if other in figures:
            theirs = figures[other][0]
            checks.append(
                (f"{other} ratio {theirs:.2f}: panel faster", max(ratio, figures.get("panel-age", (0, 0))[0]) < theirs)
            )
    print()
    for text, ok in checks:
        print(f"{'ok  ' if ok else 'MISS'} {text}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        report = WORKERS[sys.argv[2]](*sys.argv[3:])
        json.dump({**report, "vmhwm_kib": vmhwm_kib()}, sys.stdout)
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
