"""Benchmark the planning export (database → .xlsx) against bare writers.

Run it with ``.venv/bin/python bench/export.py`` (``--json`` prints one JSON object last;
``--help`` lists the options).

Method
------
* **Data.** ``--rows`` rows (default 100,000) × 8 columns, the shape of a planning table:
  an integer id, a title and a desk (text with umlauts), a day (date), start and end
  (datetimes), minutes (integer) and a budget (decimal). Made by a seeded generator, so
  every variant sees the same values: SQLite gets them in a file under ``bench/data/``
  (dates as ISO text, as SQLite stores them), PostgreSQL in a fresh server the bench
  starts from the local binaries (``tests/servers.py``; ``timestamptz``, ``date``,
  ``numeric``) on loopback.
* **Variants**, each in its own Python process:

  - ``openpyxl``: the bare openpyxl write-only loop over the same rows already in memory
    (naive datetimes, Decimals): ``ws.append(row)`` for each, then ``save``. This is the
    reference the target is measured against;
  - ``xlsxwriter``: xlsxwriter's ``constant_memory`` mode over the same in-memory rows
    (the fastest Python writer), reported for comparison;
  - ``sqlite`` / ``postgresql``: the panel's path exactly as an export run uses it:
    ``jobs.exports.drivers`` (read-only transaction, statement timeout, server-side
    cursor, the query with its two window parameters) → ``jobs.exports.xlsx.write_sheet``
    (type conversion, time zones, formula neutralisation, header, widths, autofilter).

  The timed section is the writing (and, for the panel, the query and its fetches):
  not the interpreter's start, not making the in-memory rows of the bare writers.
* **Rounds.** ``--repeat`` rounds alternate the variants (openpyxl, xlsxwriter, sqlite,
  postgresql, openpyxl, …) so the noise of a shared machine falls on all of them; the
  ratios are of the medians. Wall time is what the target is about; CPU seconds (user +
  system of the worker, plus, for PostgreSQL, of the server's processes, reaped backends
  included) are reported beside it because they hardly move when other work shares the
  cores, where single wall times vary by a factor of two.
* **Memory.** Peak RSS is the kernel's high-water mark (``VmHWM``) of the panel's worker
  process, read just before it exits. The panel's variants also run once with twice the
  rows: the peak must stay flat (the writer streams; the bare writers' processes hold all
  rows in memory by design, so their RSS is not a target).
* **Validity.** Every panel file is read back with openpyxl (read-only): the row count
  and a sample of cells must match the generated rows; a mismatch exits with status 2.

Targets (``--check`` exits 1 when one is missed): each panel variant ≤ 1.2 × the bare
openpyxl loop (with lxml installed, as in requirements.txt); peak RSS ≤ 120 MB and
growing by less than 10 MB when the rows double.

JSON keys: ``ratio_openpyxl`` and ``ratio_xlsxwriter`` (wall time; the worse of the two
databases; ``*_by_database`` has each), ``ratio_openpyxl_cpu`` (the same in CPU seconds),
``peak_rss_mb`` (the highest panel peak; ``*_by_variant`` and
``peak_rss_mb_double_rows`` have the details), ``rss_growth_mb``, ``seconds`` and
``cpu_seconds`` (medians),
``rows``, ``lxml``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import os
import random
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path[:] = [str(REPO_DIR)] + [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]

DATA_DIR = BENCH_DIR / "data" / "export"
COLUMNS = ["id", "title", "desk", "day", "starts_at", "ends_at", "minutes", "budget"]
TITLES = [
    "Haushaltsdebatte im Landtag",
    "Straßenbahnstreik",
    "Kommunalval i Malmö",
    "Älgjakten börjar",
    "Öresundsbron: pendlare",
    "Fußball-Derby: Vorbericht",
    "Bostadsbristen i Göteborg",
]
DESKS = ["Politik", "Lokales", "Sport", "Kultur", "Inrikes", "Ekonomi"]
BASE = dt.datetime(2026, 11, 24, 6, 0)
ZONE = "Europe/Berlin"
TARGET_RATIO = 1.2
TARGET_RSS_MB = 120
TARGET_GROWTH_MB = 10
SQL = (
    "SELECT id, title, desk, day, starts_at, ends_at, minutes, budget FROM planning "
    "WHERE starts_at >= %(start)s AND starts_at < %(end)s ORDER BY id"
)


def rows(count: int):
    """The generated rows, as naive Python values (what the bare writers get)."""
    rng = random.Random(20261124)
    for n in range(count):
        start = BASE + dt.timedelta(minutes=rng.randrange(0, 4 * 24 * 60))
        yield (
            n + 1,
            f"{TITLES[n % len(TITLES)]} #{n}",
            DESKS[n % len(DESKS)],
            start.date(),
            start,
            start + dt.timedelta(minutes=rng.choice((30, 45, 60, 90))),
            rng.randrange(5, 240),
            decimal.Decimal(rng.randrange(0, 1_000_000)) / 100,
        )


def vmhwm_kib() -> int:
    with open("/proc/self/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1])
    return 0


def fail(message: str) -> None:
    print(f"\nFAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# --- the workers (one process each) -------------------------------------------------------
class Timer:
    """Wall and CPU seconds (this process, user + system) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_openpyxl(count: int, out: Path, _: dict) -> Timer:
    from openpyxl import Workbook

    data = list(rows(count))
    with Timer() as timer:
        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Planung")
        ws.append(COLUMNS)
        for row in data:
            ws.append(row)
        wb.save(out)
    return timer


def worker_xlsxwriter(count: int, out: Path, _: dict) -> Timer:
    import xlsxwriter

    data = list(rows(count))
    with Timer() as timer:
        wb = xlsxwriter.Workbook(str(out), {"constant_memory": True, "default_date_format": "yyyy-mm-dd hh:mm"})
        ws = wb.add_worksheet("Planung")
        ws.write_row(0, 0, COLUMNS)
        for index, row in enumerate(data, start=1):
            ws.write_row(index, 0, [float(v) if isinstance(v, decimal.Decimal) else v for v in row])
        wb.close()
    return timer


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backupsite.settings")
    os.environ.setdefault("BACKUPSITE_ENV_FILE", "")
    os.environ.setdefault("DEBUG", "1")
    os.environ["TIME_ZONE"] = ZONE
    os.environ.setdefault("BACKUPSITE_DATA_DIR", str(DATA_DIR / "django"))
    import django

    django.setup()


def _panel(driver, out: Path) -> Timer:
    from zoneinfo import ZoneInfo

    from jobs.exports.window import window
    from jobs.exports.xlsx import write_sheet

    tz = ZoneInfo(ZONE)
    start, end = window(BASE.replace(tzinfo=tz), 5, 0, tz)
    with Timer() as timer, driver.query(driver.prepare(SQL), start, end) as result:
        write_sheet(out, "Planung", result.columns, result.rows, tz=tz, parse_text_dates=driver.text_dates)
    return timer


def worker_sqlite(count: int, out: Path, spec: dict) -> Timer:
    _django()
    from zoneinfo import ZoneInfo

    from jobs.exports.drivers import SqliteDriver

    return _panel(SqliteDriver({"path": spec["sqlite"]}, {}, tz=ZoneInfo(ZONE), timeout=600, name="bench"), out)


def worker_postgresql(count: int, out: Path, spec: dict) -> Timer:
    _django()
    from zoneinfo import ZoneInfo

    from jobs.exports.drivers import PostgresDriver

    pg = spec["postgresql"]
    driver = PostgresDriver(pg["settings"], {"password": pg["password"]}, tz=ZoneInfo(ZONE), timeout=600, name="bench")
    return _panel(driver, out)


WORKERS = {
    "openpyxl": worker_openpyxl,
    "xlsxwriter": worker_xlsxwriter,
    "sqlite": worker_sqlite,
    "postgresql": worker_postgresql,
}
PANEL = ("sqlite", "postgresql")


def run_worker(variant: str, count: int, out: Path, spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--rows", str(count), "--out", str(out)],
        input=json.dumps(spec).encode(),
        capture_output=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        fail(f"{variant} failed:\n{proc.stderr.decode(errors='replace')[-3000:]}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


# --- data ------------------------------------------------------------------------------------
def sqlite_file(count: int) -> Path:
    """The rows in a SQLite file (made once per row count)."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"planning-{count}.sqlite3"
    if path.exists():
        return path
    tmp = path.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    conn.execute(
        "CREATE TABLE planning (id INTEGER PRIMARY KEY, title TEXT, desk TEXT, day DATE, starts_at DATETIME, "
        "ends_at DATETIME, minutes INTEGER, budget NUMERIC)"
    )
    conn.executemany(
        "INSERT INTO planning VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (i, t, d, day.isoformat(), f"{s:%Y-%m-%d %H:%M:%S}", f"{e:%Y-%m-%d %H:%M:%S}", m, str(b))
            for i, t, d, day, s, e, m, b in rows(count)
        ),
    )
    conn.execute("CREATE INDEX planning_starts_at ON planning (starts_at)")
    conn.commit()
    conn.close()
    os.replace(tmp, path)
    return path


class Postgres:
    """A fresh PostgreSQL server on loopback (tests/servers.py), with the rows loaded."""

    def __init__(self, counts: list[int]) -> None:
        _django()  # tests.servers imports the test fixtures' models
        import pytest

        from tests import servers

        try:
            self.server, self.proc = servers._start_postgres()
        except pytest.skip.Exception as exc:
            fail(f"PostgreSQL is not available: {exc}")
        self.databases = {}
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(ZONE)
        for count in counts:
            name = self.server.create_database(f"bench_{count}")
            with self.server.connect(name, superuser=False) as conn:
                conn.execute(
                    "CREATE TABLE planning (id integer PRIMARY KEY, title text, desk text, day date, "
                    "starts_at timestamptz, ends_at timestamptz, minutes integer, budget numeric(10, 2))"
                )
                with conn.cursor().copy("COPY planning FROM STDIN") as copy:
                    for i, t, d, day, s, e, m, b in rows(count):
                        copy.write_row((i, t, d, day, s.replace(tzinfo=tz), e.replace(tzinfo=tz), m, b))
                conn.execute("CREATE INDEX planning_starts_at ON planning (starts_at)")
                conn.execute("ANALYZE planning")
            self.databases[count] = name

    def cpu_seconds(self) -> float:
        """CPU seconds of the whole server so far: the postmaster, its live children and
        the children it has reaped (a backend that served a connection and exited)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(stat.parent.name), int(fields[1])
            if pid == self.proc.pid:
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif ppid == self.proc.pid:
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def spec(self, count: int) -> dict:
        return {"settings": self.server.settings(self.databases[count]), "password": self.server.password}

    def stop(self) -> None:
        from tests import servers

        servers._stop(self.proc, signal.SIGINT)
        import shutil

        shutil.rmtree(self.server.directory, ignore_errors=True)


# --- validity ------------------------------------------------------------------------------------
def check_file(path: Path, count: int) -> None:
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True)
    ws = wb.active
    got = ws.iter_rows(values_only=True)
    header = next(got)
    if list(header) != COLUMNS:
        fail(f"{path.name}: header {header}")
    expected = rows(count)
    seen = 0
    for n, (back, want) in enumerate(zip(got, expected, strict=False)):
        seen += 1
        if n % 997 == 0:
            want = [
                dt.datetime.combine(v, dt.time(0))
                if type(v) is dt.date
                else float(v)
                if isinstance(v, decimal.Decimal)
                else v
                for v in want
            ]
            back = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in back]
            want = [float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in want]
            if back != want:
                fail(f"{path.name} row {n + 2}: {back} != {want}")
    wb.close()
    if seen != count:
        fail(f"{path.name}: {seen} rows instead of {count}")


# --- main ----------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of alternated runs (default 3)")
    parser.add_argument("--no-postgresql", action="store_true", help="skip PostgreSQL (no server binaries)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(sys.stdin.read() or "{}")
        timer = WORKERS[args.worker](args.rows, Path(args.out), spec)
        print(json.dumps({"seconds": timer.wall, "cpu_seconds": timer.cpu, "vmhwm_kib": vmhwm_kib()}))
        return 0

    import openpyxl

    variants = ["openpyxl", "xlsxwriter", "sqlite"] + ([] if args.no_postgresql else ["postgresql"])
    counts = [args.rows, args.rows * 2]
    print(f"XLSX export bench: {args.rows:,} rows × {len(COLUMNS)} columns, lxml {'on' if openpyxl.LXML else 'OFF'}")
    spec = {"sqlite": {c: str(sqlite_file(c)) for c in counts}}
    postgres = None if args.no_postgresql else Postgres(counts)
    out_dir = Path(tempfile.mkdtemp(prefix="backupsite-export-bench-"))
    samples: dict[str, list[dict]] = {v: [] for v in variants}
    try:

        def worker_spec(count: int) -> dict:
            return {"sqlite": spec["sqlite"][count], "postgresql": postgres.spec(count) if postgres else None}

        for round_ in range(args.repeat):
            for variant in variants:
                out = out_dir / f"{variant}.xlsx"
                server_before = postgres.cpu_seconds() if variant == "postgresql" else 0.0
                sample = run_worker(variant, args.rows, out, worker_spec(args.rows))
                if variant == "postgresql":
                    sample["server_cpu_seconds"] = postgres.cpu_seconds() - server_before
                samples[variant].append(sample)
                server = f" + {sample['server_cpu_seconds']:.2f} s server" if "server_cpu_seconds" in sample else ""
                print(
                    f"  round {round_ + 1} {variant:<11} {sample['seconds']:7.2f} s  "
                    f"CPU {sample['cpu_seconds']:6.2f} s{server}  {sample['vmhwm_kib'] / 1024:6.1f} MB"
                )
                if variant in PANEL and round_ == 0:
                    check_file(out, args.rows)
        double = {}
        for variant in (v for v in variants if v in PANEL):
            out = out_dir / f"{variant}-2x.xlsx"
            double[variant] = run_worker(variant, counts[1], out, worker_spec(counts[1]))
            print(
                f"  2× rows  {variant:<11} {double[variant]['seconds']:7.2f} s  "
                f"{double[variant]['vmhwm_kib'] / 1024:6.1f} MB"
            )
            check_file(out, counts[1])
    finally:
        if postgres is not None:
            postgres.stop()
        for path in out_dir.iterdir():
            path.unlink()
        out_dir.rmdir()

    medians = {v: statistics.median(s["seconds"] for s in samples[v]) for v in variants}
    cpu = {
        v: statistics.median(s["cpu_seconds"] + s.get("server_cpu_seconds", 0.0) for s in samples[v]) for v in variants
    }
    panel = [v for v in variants if v in PANEL]
    ratio_openpyxl = {v: medians[v] / medians["openpyxl"] for v in panel}
    ratio_xlsxwriter = {v: medians[v] / medians["xlsxwriter"] for v in panel}
    peak = {v: max(s["vmhwm_kib"] for s in samples[v]) / 1024 for v in panel}
    peak_double = {v: double[v]["vmhwm_kib"] / 1024 for v in panel}
    growth = max(peak_double[v] - peak[v] for v in panel)
    report = {
        "rows": args.rows,
        "lxml": bool(openpyxl.LXML),
        "seconds": {v: round(medians[v], 3) for v in variants},
        "ratio_openpyxl": round(max(ratio_openpyxl.values()), 3),
        "ratio_openpyxl_by_database": {v: round(r, 3) for v, r in ratio_openpyxl.items()},
        "ratio_openpyxl_cpu": round(max(cpu[v] / cpu["openpyxl"] for v in panel), 3),
        "ratio_openpyxl_cpu_by_database": {v: round(cpu[v] / cpu["openpyxl"], 3) for v in panel},
        "cpu_seconds": {v: round(cpu[v], 3) for v in variants},
        "ratio_xlsxwriter": round(max(ratio_xlsxwriter.values()), 3),
        "ratio_xlsxwriter_by_database": {v: round(r, 3) for v, r in ratio_xlsxwriter.items()},
        "peak_rss_mb": round(max(peak.values()), 1),
        "peak_rss_mb_by_variant": {v: round(p, 1) for v, p in peak.items()},
        "peak_rss_mb_double_rows": {v: round(p, 1) for v, p in peak_double.items()},
        "rss_growth_mb": round(growth, 1),
        "bare_writer_rss_mb": {
            v: round(max(s["vmhwm_kib"] for s in samples[v]) / 1024, 1) for v in ("openpyxl", "xlsxwriter")
        },
    }
    print()
    print(
        f"{'variant':<12}{'median s':>10}{'vs openpyxl':>13}{'vs xlsxwriter':>15}{'CPU s':>8}{'CPU vs':>8}"
        f"{'peak RSS':>10}"
    )
    for v in variants:
        vo = f"{medians[v] / medians['openpyxl']:.2f}×"
        vx = f"{medians[v] / medians['xlsxwriter']:.2f}×"
        co = f"{cpu[v] / cpu['openpyxl']:.2f}×"
        rss = f"{max(s['vmhwm_kib'] for s in samples[v]) / 1024:.0f} MB"
        print(f"{v:<12}{medians[v]:>10.2f}{vo:>13}{vx:>15}{cpu[v]:>8.2f}{co:>8}{rss:>10}")
    missed = []
    if report["ratio_openpyxl"] > TARGET_RATIO:
        missed.append(f"ratio_openpyxl {report['ratio_openpyxl']} > {TARGET_RATIO}")
    if report["peak_rss_mb"] > TARGET_RSS_MB:
        missed.append(f"peak_rss_mb {report['peak_rss_mb']} > {TARGET_RSS_MB}")
    if growth > TARGET_GROWTH_MB:
        missed.append(f"RSS grew by {growth:.1f} MB when the rows doubled")
    if not openpyxl.LXML:
        missed.append("lxml is not installed (the target assumes it)")
    print("targets:", "all met" if not missed else "; ".join(missed))
    if args.json:
        print(json.dumps(report))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
