"""Planning exports from real PostgreSQL and MariaDB servers (started by the tests): the
window's edges in Europe/Berlin across the night the clocks change, every cell against
the database, read-only transactions, the statement timeout."""

from __future__ import annotations

import datetime as dt
import decimal
from zoneinfo import ZoneInfo

import pytest

from backupsite import configwrite
from destinations.models import Destination
from jobs.exports import service
from jobs.models import ExportDataset, ExportRun, PlanningExport, Source
from tests.export_helpers import assert_same_cells, read_sheet

pytest_plugins = ["tests.servers"]

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC
# The clocks go forward in Berlin on 29 March 2026 (02:00 → 03:00); a five-day window
# from that day is 119 hours long and ends at 3 April 00:00 CEST = 2 April 22:00 UTC.
DST_DAY = dt.date(2026, 3, 29)
RUN_AT = dt.datetime(2026, 3, 29, 2, 0, tzinfo=UTC)  # 04:00 in Berlin
EDGE_ROWS = [
    ("just before the window", dt.datetime(2026, 3, 28, 23, 59, tzinfo=BERLIN), False),
    ("today 00:00", dt.datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN), True),
    ("after the jump", dt.datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN), True),
    ("last evening", dt.datetime(2026, 4, 2, 23, 30, tzinfo=BERLIN), True),
    ("day 6 00:00", dt.datetime(2026, 4, 3, 0, 0, tzinfo=BERLIN), False),
    # 5 × 24 h after the start would still take this one: the window is calendar days.
    ("24-hour arithmetic", dt.datetime(2026, 4, 3, 0, 30, tzinfo=BERLIN), False),
]
PG_SQL = """SELECT id, title, starts_at, day, budget, confirmed, note
FROM appointments WHERE starts_at >= %(start)s AND starts_at < %(end)s ORDER BY starts_at"""


@pytest.fixture
def berlin(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    return BERLIN


def make_export(source: Source, destination: Destination, sql: str) -> PlanningExport:
    export = PlanningExport(name=f"Export of {source.name}", source=source)
    configwrite.save(export, m2m={"destinations": [destination]})
    ExportDataset.objects.create(export=export, file_name="termine.xlsx", sheet_title="Termine", sql=sql)
    return export


@pytest.fixture
def local(folders):
    return Destination.objects.create(name="Local", kind="local", settings={"path": str(folders["backups"])})


# --- PostgreSQL -----------------------------------------------------------------------------
@pytest.fixture
def pg_planning(postgres_server, db):
    database = postgres_server.create_database()
    with postgres_server.connect(database, superuser=False) as conn:
        conn.execute(
            "CREATE TABLE appointments (id serial PRIMARY KEY, title text NOT NULL, starts_at timestamptz NOT NULL, "
            "day date, budget numeric(10, 2), confirmed boolean, note text)"
        )
        conn.execute("CREATE SEQUENCE counter")
        for n, (title, starts_at, _) in enumerate(EDGE_ROWS):
            conn.execute(
                "INSERT INTO appointments (title, starts_at, day, budget, confirmed, note) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    f"{title} – Möte i Malmö",
                    starts_at,
                    starts_at.date(),
                    decimal.Decimal(n) + decimal.Decimal("0.5"),
                    n % 2 == 0,
                    None if n % 3 else "=1+2",
                ],
            )
    source = Source.objects.create(
        name="Newsroom PG",
        kind="postgresql",
        settings=postgres_server.settings(database),
        secrets={"password": postgres_server.password},
    )
    return {"server": postgres_server, "database": database, "source": source}


def pg_rows(pg_planning, sql: str, start, end):
    with pg_planning["server"].connect(pg_planning["database"], superuser=False) as conn:
        conn.execute("SET TimeZone = 'Europe/Berlin'")
        cursor = conn.execute(sql, {"start": start, "end": end})
        return [c.name for c in cursor.description], cursor.fetchall()


def test_postgresql_window_edges_across_the_clock_change_cell_by_cell(pg_planning, local, folders, berlin):
    export = make_export(pg_planning["source"], local, PG_SQL)
    run = service.execute(service.create_run(export, moment=RUN_AT).pk)
    assert run.state == ExportRun.State.SUCCEEDED, run.error
    assert run.window_start == dt.datetime(2026, 3, 29, 0, 0, tzinfo=BERLIN)
    assert run.window_end.astimezone(UTC) == dt.datetime(2026, 4, 2, 22, 0, tzinfo=UTC)
    columns, rows = pg_rows(pg_planning, PG_SQL, run.window_start, run.window_end)
    assert [r[1].split(" – ")[0] for r in rows] == [title for title, _, inside in EDGE_ROWS if inside]
    ws = assert_same_cells(folders["backups"] / "termine.xlsx", columns, rows, berlin, title="Termine")
    # timestamptz arrives as Berlin wall time: 00:00 on the DST day, 23:30 on the last.
    starts = [row[2] for row in read_sheet(folders["backups"] / "termine.xlsx")[2]]
    assert starts[0] == dt.datetime(2026, 3, 29, 0, 0) and starts[-1] == dt.datetime(2026, 4, 2, 23, 30)
    assert ws["E2"].data_type == "n" and ws["F2"].data_type == "b"
    formula_cells = [c for c in ws["G"][1:] if c.value == "=1+2"]
    assert formula_cells and all(c.data_type == "s" for c in formula_cells)


def test_postgresql_runs_the_query_read_only(pg_planning, local):
    export = make_export(pg_planning["source"], local, "SELECT nextval('counter') AS n")
    run = service.execute(service.create_run(export).pk)
    assert run.state == ExportRun.State.FAILED
    assert "read-only transaction" in run.error


def test_postgresql_stops_a_long_query(pg_planning, local, settings):
    settings.BACKUPSITE_EXPORT_STATEMENT_TIMEOUT = 1
    export = make_export(pg_planning["source"], local, "SELECT pg_sleep(30) AS nap")
    started = dt.datetime.now()
    run = service.execute(service.create_run(export).pk)
    assert (dt.datetime.now() - started).total_seconds() < 15
    assert run.state == ExportRun.State.FAILED and "ran longer than the limit of 1 second" in run.error


def test_postgresql_errors_never_show_the_password(pg_planning, local):
    source = pg_planning["source"]
    source.secrets = {"password": "wrong-" + pg_planning["server"].password}
    source.save()
    export = make_export(source, local, "SELECT 1")
    run = service.execute(service.create_run(export).pk)
    assert run.state == ExportRun.State.FAILED and "Cannot connect to PostgreSQL" in run.error
    assert pg_planning["server"].password not in run.error and pg_planning["server"].password not in run.log


# --- MariaDB ---------------------------------------------------------------------------------------
MY_SQL = """SELECT id, title, starts_at, budget, note FROM appointments
WHERE starts_at >= %(start)s AND starts_at < %(end)s AND title LIKE '%Möte%' ORDER BY starts_at"""


@pytest.fixture
def my_planning(mariadb_server, db):
    database = mariadb_server.create_database()
    statements = [
        "CREATE TABLE appointments (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(200) NOT NULL, "
        "starts_at DATETIME NOT NULL, budget DECIMAL(10,2), note TEXT) CHARACTER SET utf8mb4"
    ]
    for n, (title, starts_at, _) in enumerate(EDGE_ROWS):
        wall = starts_at.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S")
        note = "NULL" if n % 3 else "'@SUM(A1)'"
        statements.append(
            f"INSERT INTO appointments (title, starts_at, budget, note) VALUES ('{title} – Möte i Malmö', '{wall}', "  # noqa: S608 - the test's own constants
            f"{n}.25, {note})"
        )
    mariadb_server.sql(";".join(statements), database)
    source = Source.objects.create(
        name="Newsroom MariaDB",
        kind="mysql",
        settings=mariadb_server.settings(database),
        secrets={"password": mariadb_server.password},
    )
    return {"server": mariadb_server, "database": database, "source": source}


def test_mariadb_window_edges_in_local_time_cell_by_cell(my_planning, local, folders, berlin):
    import pymysql

    export = make_export(my_planning["source"], local, MY_SQL)
    run = service.execute(service.create_run(export, moment=RUN_AT).pk)
    assert run.state == ExportRun.State.SUCCEEDED, run.error
    server = my_planning["server"]
    conn = pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password.encode(),  # UTF-8, as the server has it (not Latin-1)
        database=my_planning["database"],
        charset="utf8mb4",
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                MY_SQL.replace("%Möte%", "%%Möte%%"),
                {"start": dt.datetime(2026, 3, 29), "end": dt.datetime(2026, 4, 3)},
            )
            columns, rows = [c[0] for c in cursor.description], cursor.fetchall()
    finally:
        conn.close()
    assert [r[1].split(" – ")[0] for r in rows] == [title for title, _, inside in EDGE_ROWS if inside]
    ws = assert_same_cells(folders["backups"] / "termine.xlsx", columns, rows, berlin)
    assert ws["E2"].value == "@SUM(A1)" or any(c.value == "@SUM(A1)" and c.data_type == "s" for c in ws["E"])


def test_mariadb_stops_a_long_query(my_planning, local, settings):
    settings.BACKUPSITE_EXPORT_STATEMENT_TIMEOUT = 1
    export = make_export(
        my_planning["source"],
        local,
        "SELECT count(*) FROM appointments a, appointments b, appointments c, "
        "appointments d, appointments e, appointments f, appointments g, appointments h, appointments i",
    )
    started = dt.datetime.now()
    run = service.execute(service.create_run(export).pk)
    assert (dt.datetime.now() - started).total_seconds() < 20
    assert run.state == ExportRun.State.FAILED and "ran longer than the limit of 1 second" in run.error, run.error


def test_mariadb_runs_the_query_in_a_read_only_transaction(my_planning, local):
    """A SELECT can still write through a stored function; the read-only transaction
    refuses it (the second lock behind the SQL check)."""
    my_planning["server"].sql(
        "CREATE TABLE written (n INT);\n"
        "DELIMITER //\n"
        "CREATE FUNCTION sneaky() RETURNS INT MODIFIES SQL DATA\n"
        "BEGIN INSERT INTO written VALUES (1); RETURN 1; END //\n"
        "DELIMITER ;\n",
        my_planning["database"],
    )
    export = make_export(my_planning["source"], local, "SELECT sneaky() AS n")
    run = service.execute(service.create_run(export).pk)
    assert run.state == ExportRun.State.FAILED and "READ ONLY" in run.error.upper(), run.error
    assert my_planning["server"].sql("SELECT count(*) FROM written", my_planning["database"]) == [["0"]]
