"""Benchmark the panel's pages with a big installation in the database.

Run it with ``.venv/bin/python bench/pages.py`` (``--json`` prints one JSON object last,
``--help`` lists the options).

Method
------
* **Data.** Each measurement runs in a fresh child process with its own data dir and a
  fresh database, migrated, then filled with ``bulk_create``: at the big scale 1,000 jobs,
  100 sources, 100 destinations and 100,000 runs (100 per job, newest first: about 90 %
  succeeded, the rest failed or partial; five jobs have a run in progress), the five
  latest runs of each job with an upload; at the small scale 10 jobs, 10 sources, 10
  destinations and 1,000 runs. Every job has one to three sources and one or two
  destinations.
* **Databases.** SQLite (a file in the data dir, WAL, as the embedded default runs it;
  no ``ANALYZE``, as nothing runs it there), and PostgreSQL when its server binary is
  installed: the bench starts a throw-away server from the local binary (``initdb`` +
  ``postgres`` on a free port, durability off, as ``tests/servers.py`` does, whose helper
  it uses), runs ``VACUUM ANALYZE`` after seeding (as autovacuum would) and stops the
  server at the end.
* **Requests.** Django's test client, as an administrator (every control shown), with
  production settings (``DEBUG=0``, collected static files, manifest storage, no SSL
  redirect since the client speaks plain HTTP). Each page is requested a few times to warm
  up (caches, the connection), then ``--rounds`` times, timed around ``client.get`` with
  ``time.perf_counter`` (and ``time.process_time``: the CPU this process spent, which a
  busy shared machine disturbs less): the table shows the median and the 95th
  percentile. The queries of one request are counted (a ``connection.execute_wrapper``)
  at both scales: they must not grow with the rows shown.
* **Pages.** The dashboard, the job list, a job page, the runs list (first page, filtered
  by state, and the last page), a run page, the source list and a source page, the
  destination list, and the wizard when the checkout has it (:data:`WIZARD_URL_NAME`): its
  first step by GET, then each of its four steps shown through its "go to step" button
  (a POST: a GET starts a new wizard). Any page answering other than 200 stops the bench
  (exit status 2).

Exit status: 0; with ``--check`` 1 when a page's p95 is above ``--target-ms`` (50) on any
database or its query count differs between the scales; 2 when a page fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
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
TARGET_MS = 50.0
SCALES = {
    "small": {"jobs": 10, "sources": 10, "destinations": 10},
    "big": {"jobs": 1000, "sources": 100, "destinations": 100},
}
RUNS_PER_JOB = 100
UPLOADS_PER_JOB = 5
ACTIVE_JOBS = 5

#: The wizard's URL (formtools' SessionWizardView: one URL for the four steps). A GET
#: starts a wizard and shows its first step; every step is then shown by POSTing the
#: wizard's "go to step" button (as Back and the step links do: nothing is validated),
#: because a GET would start the wizard again. Benched when the name resolves (the wizard
#: is merged), reported as missing otherwise.
WIZARD_URL_NAME = "jobs:job_create"
WIZARD_STEPS = ("general", "content", "destination", "summary")


# --- the child: one database, one scale --------------------------------------------------
def child_env(data_dir: Path, database_url: str, repo: Path = REPO_DIR) -> dict[str, str]:
    from cryptography.fernet import Fernet

    return {
        **os.environ,
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + os.urandom(32).hex(),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "localhost",
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "SECURE_HSTS_SECONDS": "0",
        "STATIC_ROOT": str(data_dir / "static"),
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(repo),
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
    }


def seed(scale: dict, data_dir: Path, seed_value: int = 8) -> dict:
    """Fill the database; returns the row counts and the seconds it took."""
    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from backupsite.roles import ADMINISTRATORS
    from destinations.models import Destination
    from jobs.models import Job, Run, Source, Upload

    rng = random.Random(seed_value)
    started = time.monotonic()
    files = data_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    kinds = ["directory", "directory", "postgresql", "mysql", "sqlite"]
    sources = []
    for n in range(scale["sources"]):
        kind = kinds[n % len(kinds)]
        settings = {
            "directory": {"path": str(files / f"share-{n}"), "exclude": ["*.tmp"]},
            "postgresql": {"host": "db.example", "database": f"app{n}", "user": "backup"},
            "mysql": {"host": "db.example", "database": f"shop{n}", "user": "backup"},
            "sqlite": {"path": str(files / f"app-{n}.sqlite3")},
        }[kind]
        sources.append(
            Source(
                name=f"Source {n:03d}",
                slug=f"source-{n:03d}",
                kind=kind,
                settings=settings,
                secrets={"password": "bench"} if kind in ("postgresql", "mysql") else {},
                size_bytes=rng.randrange(1 << 20, 1 << 34),
                file_count=rng.randrange(1, 50_000),
                size_measured_at=timezone.now(),
            )
        )
    sources = Source.objects.bulk_create(sources)
    destinations = Destination.objects.bulk_create(
        [
            Destination(name=f"Disk {n:03d}", slug=f"disk-{n:03d}", kind="local", settings={"path": f"/srv/b/{n}"})
            for n in range(scale["destinations"])
        ]
    )
    intervals = ["manual", "hourly", "daily", "daily", "weekly", "monthly"]
    now = timezone.now()
    jobs = []
    for n in range(scale["jobs"]):
        job = Job(
            name=f"Job {n:04d}",
            slug=f"job-{n:04d}",
            report_to="ops@example.com",
            interval=intervals[n % len(intervals)],
            first_run_at=now - timezone.timedelta(days=200),
            timezone="Europe/Berlin",
            keep_last=7,
        )
        job.refresh_next_run(now)  # bulk_create skips the pre_save signal
        jobs.append(job)
    jobs = Job.objects.bulk_create(jobs)
    job_sources = [
        Job.sources.through(job_id=job.pk, source_id=s.pk)
        for job in jobs
        for s in rng.sample(sources, rng.randint(1, 3))
    ]
    Job.sources.through.objects.bulk_create(job_sources)
    job_destinations = [
        Job.destinations.through(job_id=job.pk, destination_id=d.pk)
        for job in jobs
        for d in rng.sample(destinations, rng.randint(1, 2))
    ]
    Job.destinations.through.objects.bulk_create(job_destinations)

    runs = []
    for index, job in enumerate(jobs):
        for k in range(RUNS_PER_JOB):  # k = 0 is the newest
            created = now - timezone.timedelta(hours=6 * k + rng.random())
            state = rng.choices(["succeeded", "failed", "partial"], weights=[90, 7, 3])[0]
            if k == 0 and index < ACTIVE_JOBS:
                state = "running"
            final = state != "running"
            runs.append(
                Run(
                    job_id=job.pk,
                    job_name=job.name,
                    config={"job": {"slug": job.slug, "encryption": "none"}, "sources": [], "destinations": []},
                    trigger="schedule",
                    state=state,
                    phase="done" if final else "archive",
                    bytes_done=1 << 20,
                    bytes_total=1 << 21,
                    archive_name=f"{job.slug}-{k}.tar.zst" if state != "failed" else "",
                    archive_size=rng.randrange(1 << 20, 1 << 30) if state in ("succeeded", "partial") else None,
                    archive_sha256="ab" * 32 if state != "failed" else "",
                    file_count=rng.randrange(1, 10_000),
                    local_path=f"{job.slug}/{job.slug}-{k}.tar.zst",
                    log="2026-01-01 02:00:00 Archiving 3 sources\n" * 12,
                    error="Destination unreachable" if state == "failed" else "",
                    created_at=created,
                    started_at=created,
                    finished_at=created + timezone.timedelta(minutes=3) if final else None,
                    heartbeat_at=created,
                )
            )
    Run.objects.bulk_create(runs, batch_size=2000)
    recent: dict[int, list[int]] = {}
    for job_id, pk in Run.objects.order_by("job_id", "-created_at").values_list("job_id", "pk"):
        recent.setdefault(job_id, [])
        if len(recent[job_id]) < UPLOADS_PER_JOB:
            recent[job_id].append(pk)
    first_destination = dict(Job.destinations.through.objects.values_list("job_id", "destination_id"))
    names = {d.pk: d.name for d in destinations}
    uploads = [
        Upload(
            run_id=pk,
            destination_id=first_destination[job_id],
            destination_name=names[first_destination[job_id]],
            state="succeeded",
            attempts=1,
            remote_name="x.tar.zst",
            finished_at=now,
        )
        for job_id, pks in recent.items()
        for pk in pks
    ]
    Upload.objects.bulk_create(uploads, batch_size=2000)
    admin = User.objects.create_user("bench-admin", password="bench-password-not-a-secret")  # noqa: S106
    admin.groups.add(Group.objects.get(name=ADMINISTRATORS))
    return {
        "jobs": len(jobs),
        "sources": Source.objects.count(),
        "destinations": len(destinations),
        "runs": Run.objects.count(),
        "uploads": len(uploads),
        "seed_seconds": round(time.monotonic() - started, 1),
    }


def pages() -> list[tuple[str, str, object]]:
    """(name, URL, how to request it): ``None`` for a GET, else a callable taking the client."""
    from django.urls import reverse

    from jobs.models import Job, Run, Source

    job = Job.objects.order_by("pk")[Job.objects.count() // 2]
    run = Run.objects.filter(job=job, state="succeeded").order_by("-created_at").first()
    source = Source.objects.exclude(kind="panel_database").order_by("pk").first()
    last_page = max(1, math.ceil(Run.objects.count() / 25))
    found = [
        ("dashboard", reverse("dashboard"), None),
        ("job list", reverse("jobs:job_list"), None),
        ("job page", reverse("jobs:job_detail", args=[job.pk]), None),
        ("runs list", reverse("jobs:run_list"), None),
        ("runs list, failed", reverse("jobs:run_list") + "?state=failed", None),
        ("runs list, last page", reverse("jobs:run_list") + f"?page={last_page}", None),
        ("run page", reverse("jobs:run_detail", args=[run.pk]), None),
        ("source list", reverse("jobs:source_list"), None),
        ("source page", reverse("jobs:source_detail", args=[source.pk]), None),
        ("destination list", reverse("destinations:list"), None),
    ]
    return found + wizard_pages()


def wizard_pages() -> list[tuple[str, str, object]]:
    import re

    from django.urls import NoReverseMatch, reverse

    try:
        url = reverse(WIZARD_URL_NAME)
    except NoReverseMatch:
        return []
    pages = [("wizard step 1 (GET)", url, None)]
    state: dict = {}

    def start(client) -> dict:
        """A wizard of this client's session: its id and management field, from a GET,
        then filled in step by step with Next (a valid content and destination step), so
        that "go to step" reaches every step: a step link stops at the first step before
        it that does not validate."""
        if not state:
            from destinations.models import Destination
            from jobs.models import Source

            html = client.get(url).content.decode()
            state["id"] = re.search(r'name="wizard_id" value="([^"]+)"', html).group(1)
            state["field"] = re.search(r'name="([^"]+-current_step)"', html).group(1)
            source = Source.objects.exclude(kind="panel_database").order_by("name").first()
            destination = Destination.objects.order_by("name").first()
            fill = [
                ("general", general),
                ("content", {"content-sources": [str(source.pk)], "content-encryption": "none"}),
                ("destination", {"destination-target": str(destination.pk)}),
            ]
            for step, data in fill:
                response = client.post(url, {"wizard_id": state["id"], state["field"]: step, **data})
                following = re.search(r'name="[^"]+-current_step" value="([^"]+)"', response.content.decode())
                if response.status_code != 200 or following is None or following.group(1) == step:
                    raise SystemExit(f"the wizard did not accept step {step} (status {response.status_code})")
        return state

    # Step 1 as a user fills it in, sent with every "go to step" (the step being left is
    # kept as posted: an empty one would replace what the wizard holds).
    general = {
        "general-name": "Bench job",
        "general-report_to": "ops@example.com",
        "general-interval": "daily",
        "general-first_date": "2030-01-01",
        "general-first_time": "02:00",
        "general-timezone": "Europe/Berlin",
        "general-keep_last": "7",
    }

    for step in WIZARD_STEPS:

        def show(client, step=step):
            wizard = start(client)
            data = {"wizard_id": wizard["id"], wizard["field"]: "general", "wizard_goto_step": step, **general}
            response = client.post(url, data)
            if step not in wizard.setdefault("checked", set()):  # (once: not in the timed requests)
                shown = re.search(r'name="[^"]+-current_step" value="([^"]+)"', response.content.decode())
                if shown is None or shown.group(1) != step:
                    raise SystemExit(f"the wizard showed {shown and shown.group(1)} instead of step {step}")
                wizard["checked"].add(step)
            return response

        pages.append((f"wizard: {step}", url, show))
    return pages


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def measure(rounds: int, warmup: int) -> dict:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(User.objects.get(username="bench-admin"))
    results = {}
    for name, url, how in pages():

        def request(name=name, url=url, how=how):
            return client.get(url) if how is None else how(client)

        for _ in range(warmup):
            response = request()
            if response.status_code != 200:
                raise SystemExit(f"{name} ({url}) answered {response.status_code}")
        executed: list[str] = []

        def count(execute, sql, params, many, context, executed=executed):
            executed.append(sql)
            return execute(sql, params, many, context)

        # A wrapper, not CaptureQueriesContext: the query log is reset at every request start.
        with connection.execute_wrapper(count):
            request()
        times, cpu = [], []
        for _ in range(rounds):
            started, started_cpu = time.perf_counter(), time.process_time()
            request()
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        results[name] = {
            "url": url,
            "queries": len(executed),
            "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(percentile(times, 0.95), 1),
            "max_ms": round(max(times), 1),
            "cpu_median_ms": round(statistics.median(cpu), 1),
            "cpu_p95_ms": round(percentile(cpu, 0.95), 1),
        }
    missing = [] if any(name.startswith("wizard") for name in results) else [WIZARD_URL_NAME]
    return {"pages": results, "missing": missing}


def child_main(args) -> int:
    import django
    from django.core.management import call_command

    django.setup()
    data_dir = Path(os.environ["BACKUPSITE_DATA_DIR"])
    call_command("migrate", verbosity=0, interactive=False)
    call_command("collectstatic", verbosity=0, interactive=False)
    from django.db import connection, transaction

    with transaction.atomic():
        counts = seed(SCALES[args.scale], data_dir)
    if connection.vendor == "postgresql":
        # What autovacuum does after 100,000 inserts: statistics, and the visibility map
        # (without it COUNT(*) of the runs reads the whole table: 50 ms instead of 7).
        # Not on SQLite: nothing in the panel (or Django) runs ANALYZE there, and its
        # statistics know nothing of skew: with them the planner scans every run for the
        # few active ones.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    print(json.dumps({"counts": counts, **measure(args.rounds, args.warmup)}))
    return 0


# --- the parent: databases, scales, the report ---------------------------------------------
def start_postgres():
    """(server, process) from tests/servers.py, or None when PostgreSQL is not installed."""
    import glob

    if not (shutil.which("postgres") or glob.glob("/usr/lib/postgresql/*/bin/postgres")):
        return None
    sys.path.insert(0, str(REPO_DIR))
    # tests/servers.py imports the test helpers, which import Django models: set Django up
    # (the test settings, a throw-away data dir) before borrowing its server starter.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from tests.servers import _start_postgres

    return _start_postgres()


def run_child(database: str, url: str, scale: str, args) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"backupsite-bench-{database}-{scale}-"))
    try:
        cmd = [sys.executable, __file__, "--child", "--scale", scale, "--rounds", str(args.rounds)]
        cmd += ["--warmup", str(args.warmup)]
        url = url.format(data=data_dir) if database == "sqlite" else url
        env = child_env(data_dir, url, Path(args.repo).resolve())
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=args.repo)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(2)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def report(results: dict, target: float) -> tuple[dict, bool]:
    ok = True
    summary: dict = {"target_ms": target, "p95_ms": {}, "queries": {}, "databases": {}}
    for database, scales in results.items():
        big, small = scales["big"], scales["small"]
        per_db = {"p95_ms": {}, "median_ms": {}, "cpu_p95_ms": {}, "queries": {}, "counts": big["counts"]}
        for name, row in big["pages"].items():
            queries = {"10": small["pages"][name]["queries"], "1000": row["queries"]}
            per_db["p95_ms"][name] = row["p95_ms"]
            per_db["median_ms"][name] = row["median_ms"]
            per_db["cpu_p95_ms"][name] = row.get("cpu_p95_ms")
            per_db["queries"][name] = queries
            summary["p95_ms"][name] = max(summary["p95_ms"].get(name, 0.0), row["p95_ms"])
            summary["queries"].setdefault(name, queries)
            if row["p95_ms"] > target or queries["10"] != queries["1000"]:
                ok = False
        per_db["wizard_missing"] = big["missing"]
        summary["databases"][database] = per_db
    summary["ok"] = ok
    summary["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return summary, ok


def print_table(summary: dict) -> None:
    for database, data in summary["databases"].items():
        counts = data["counts"]
        print(
            f"\n{database}: {counts['jobs']} jobs, {counts['sources']} sources, {counts['destinations']} destinations, "
            f"{counts['runs']} runs, {counts['uploads']} uploads (seeded in {counts['seed_seconds']} s)"
        )
        print(f"{'page':<24} {'median ms':>10} {'p95 ms':>8} {'CPU p95':>8} {'queries @10':>12} {'@1000':>6}")
        for name, p95 in data["p95_ms"].items():
            q = data["queries"][name]
            flag = "" if p95 <= summary["target_ms"] and q["10"] == q["1000"] else "  <-- over target"
            cpu = data["cpu_p95_ms"][name]
            print(f"{name:<24} {data['median_ms'][name]:>10} {p95:>8} {cpu:>8} {q['10']:>12} {q['1000']:>6}{flag}")
        print(f"load average at the end: {summary['load_average']}")
        if data["wizard_missing"]:
            print(f"the wizard was not benched: {WIZARD_URL_NAME} does not resolve in this checkout")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--rounds", type=int, default=60, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per page first")
    parser.add_argument("--target-ms", type=float, default=TARGET_MS)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--repo", default=str(REPO_DIR), help="the checkout to bench (e.g. an export of main, to compare before/after)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scale", choices=sorted(SCALES), default="big", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    wanted = [d.strip() for d in args.databases.split(",") if d.strip()]
    results: dict = {}
    server = proc = None
    try:
        for database in wanted:
            if database == "sqlite":
                results["sqlite"] = {
                    scale: run_child("sqlite", "sqlite:///{data}/db.sqlite3", scale, args) for scale in ("small", "big")
                }
            elif database == "postgresql":
                if server is None:
                    started = start_postgres()
                    if started is None:
                        print("PostgreSQL is not installed: benched SQLite only.", file=sys.stderr)
                        continue
                    server, proc = started
                results["postgresql"] = {}
                for scale in ("small", "big"):
                    name = server.create_database(f"bench_{scale}")
                    results["postgresql"][scale] = run_child("postgresql", server.url(name), scale, args)
            else:
                raise SystemExit(f"unknown database {database!r}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            shutil.rmtree(server.directory, ignore_errors=True)
    summary, ok = report(results, args.target_ms)
    print_table(summary)
    if args.json:
        print(json.dumps(summary))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
