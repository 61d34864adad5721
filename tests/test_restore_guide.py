"""docs/restore-guide.md, followed as written (issue 12, item 5).

Real backups are made with the engine (a plain job run twice and a job encrypted with a
backup password; each with a folder, a PostgreSQL database and the panel's own
database). Only the destination's files are copied into a clean folder; then the guide's
commands, taken from the Markdown (the ```sh blocks after a ``<!-- restore-test: NAME
-->`` comment), run there in bash with a PATH of stock tools only (no Python at all), in
a pseudo-terminal on which the backup password is typed at age's prompt, as a person
would: age 1.1 reads a passphrase only from the terminal. The only values given from
outside are the variables the guide tells its reader to set (``SOURCE``, ``TARGET``,
``DUMP``, ``NEWDB``, ``BACKUPSITE_DATA_DIR`` and libpq's ``PG*``), exported before the
block that uses them. The restored files must be byte-identical to the originals, and
the restored databases must hold the rows.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import shutil
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from backupsite.sensitive import excluded_table_names
from destinations.models import Destination
from jobs import services
from jobs.engine.agekeys import KEY_FILE_NAME
from jobs.models import Job, Run, Source
from jobs.sources import dbtools
from tests.conftest import make_tree, require_binary, trees_identical

pytest_plugins = ["tests.servers"]
pytestmark = pytest.mark.slow

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "restore-guide.md"
PASSWORD = "correct horse battery staple"
MARKED_BLOCK = re.compile(r"<!-- restore-test: ([a-z0-9-]+) -->\n```sh\n(.*?)\n```", re.S)
# What the guide may call: the stock tools it lists, and the shell's companions.
STOCK_TOOLS = (
    *("bash", "age", "zstd", "tar", "jq", "sha256sum", "sqlite3"),
    *("mkdir", "cp", "mv", "chmod", "sort", "tail", "cut"),
)
POSTGRES_TOOLS = ("createdb", "pg_restore", "psql")

PLAIN_STEPS = ["list", "newest", "check-archive", "extract-plain", "sources", "check-files"]
ENCRYPTED_STEPS = ["list", "newest", "check-archive", "extract-encrypted", "sources", "check-files"]
SOURCE_STEPS = ["restore-folder", "restore-postgresql", "check-panel-sqlite", "restore-panel-sqlite", "restore-mysql"]
MY_CNF = re.compile(r"```ini\n(\[client\]\n.*?)\n```", re.S)


def guide_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for name, body in MARKED_BLOCK.findall(GUIDE.read_text()):
        assert name not in blocks, f"two blocks are marked {name!r} in {GUIDE.name}"
        blocks[name] = body
    return blocks


def test_every_marked_block_of_the_guide_is_run_here():
    """A block marked for the test but run by no scenario would look tested and not be."""
    assert set(guide_blocks()) == set(PLAIN_STEPS) | set(ENCRYPTED_STEPS) | set(SOURCE_STEPS)


# --- the demo installation --------------------------------------------------------------
def make_panel_database(path: Path) -> None:
    """A stand-in for the panel's live SQLite file: users, and rows in every table whose
    rows a panel backup must leave out (sessions, tickets, throttling, cache). The
    panel's real schema through the same dump is tested in test_sensitive_dump."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE auth_user (id INTEGER PRIMARY KEY, username TEXT NOT NULL, password TEXT NOT NULL)")
    conn.executemany(
        "INSERT INTO auth_user (username, password) VALUES (?, ?)",
        [("alice", "pbkdf2_sha256$870000$salt$hash-a"), ("bob", "pbkdf2_sha256$870000$salt$hash-b")],
    )
    for table in excluded_table_names():
        conn.execute(f'CREATE TABLE "{table}" (key TEXT PRIMARY KEY, value TEXT)')
        conn.execute(f"INSERT INTO \"{table}\" VALUES ('row-of-{table}', 'secret token')")  # noqa: S608
    conn.commit()
    conn.close()


@pytest.fixture
def installation(db, folders, tmp_path, monkeypatch, postgres_server):
    """Sources (a folder, a PostgreSQL database, the panel's database), one local
    destination, a plain job and an encrypted one."""
    tree = make_tree(tmp_path / "office")
    shop = postgres_server.create_database()
    with postgres_server.connect(shop, superuser=False) as conn:
        conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, note text)")
        conn.execute("INSERT INTO customers (name, note) VALUES ('Zoë Ünïcødé', 'first'), ('Bob', NULL)")
    panel = tmp_path / "panel" / "db.sqlite3"
    panel.parent.mkdir()
    make_panel_database(panel)
    monkeypatch.setattr(
        dbtools, "panel_database_config", lambda: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(panel)}
    )
    sources = [
        Source.objects.create(name="Office files", kind="directory", settings={"path": str(tree)}),
        Source.objects.create(
            name="Shop database",
            kind="postgresql",
            settings=postgres_server.settings(shop),
            secrets={"password": postgres_server.password},
        ),
        Source.objects.get_or_create(kind="panel_database", defaults={"name": "Panel database"})[0],
    ]
    destination = Destination.objects.create(
        name="Local disk", kind="local", settings={"path": str(folders["backups"])}
    )
    jobs = {}
    for name, template in (("Plain backup", "{job}-{run}"), ("Encrypted backup", "{job}-{date}-{time}")):
        job = Job.objects.create(name=name, archive_name_template=template)
        job.sources.set(sources)
        job.destinations.set([destination])
        jobs[name] = job
    jobs["Encrypted backup"].set_backup_password(PASSWORD)
    jobs["Encrypted backup"].save()
    return {"tree": tree, "shop": shop, "jobs": jobs, "backups": folders["backups"], "server": postgres_server}


def run(job: Job) -> Run:
    result = services.execute_run(services.create_run(job).pk)
    assert result.state == Run.State.SUCCEEDED, result.error
    return result


def copy_of_the_destination(backups: Path, job: Job, work: Path) -> Path:
    """What the user has: the job's folder from the destination, copied somewhere else
    (file times change on the way, as they do with most copies)."""
    copy = work / "restore-work"
    shutil.copytree(backups / "backupsite" / job.slug, copy, copy_function=shutil.copyfile)
    return copy


def stock_path(work: Path, server) -> str:
    """A folder of links to the stock tools, and nothing else (no Python)."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name in STOCK_TOOLS:
        (bin_dir / name).symlink_to(require_binary(name))
    for name in POSTGRES_TOOLS if server is not None else ():
        (bin_dir / name).symlink_to(server.tool(name))  # the server's own version, as the guide asks
    return str(bin_dir)


# --- following the guide ------------------------------------------------------------------
def follow(steps, *, cwd: Path, path: str, env: dict[str, str] | None = None, password: str | None = None):
    """Run the guide's blocks *steps* one after another in one bash, in a pseudo-terminal
    (age's prompt), typing *password* at every passphrase prompt. A step is a block's
    name, or (name, {variable: value}) for the variables the guide tells the reader to
    set before that block. Returns (exit status, everything printed)."""
    blocks = guide_blocks()
    script = ["set -euo pipefail"]  # the test's strictness; the blocks are as written
    for step in steps:
        name, variables = step if isinstance(step, tuple) else (step, {})
        script += [f"export {key}={shlex.quote(value)}" for key, value in variables.items()]
        script.append(f"echo '>>> {name}'")
        script.append(blocks[name])
    bash = require_binary("bash")
    base_env = {"PATH": path, "HOME": str(cwd.parent / "home"), "LC_ALL": "C.UTF-8", "TERM": "dumb"}
    Path(base_env["HOME"]).mkdir(exist_ok=True)
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, as in a user's terminal
        os.chdir(cwd)
        os.execve(bash, [bash, "-c", "\n".join(script)], {**base_env, **(env or {})})  # noqa: S606
    seen, prompts = b"", 0
    deadline = time.monotonic() + 120
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.1, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, 9)
            raise AssertionError(f"the guide's commands did not finish; they printed {seen.decode(errors='replace')}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if password is not None and seen.lower().count(b"enter passphrase") > prompts:
            prompts += 1
            os.write(fd, password.encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace").replace("\r\n", "\n")


def pg_rows(server, database: str) -> list[tuple]:
    with server.connect(database) as conn:
        return conn.execute("SELECT id, name, note FROM customers ORDER BY id").fetchall()


def assert_panel_restored(data_dir: Path, printed: str) -> None:
    db = data_dir / "db.sqlite3"
    assert (data_dir / "db.sqlite3.before-restore").read_bytes() == b"the broken old database"
    assert not (data_dir / "db.sqlite3-wal").exists()
    assert (data_dir / "db.sqlite3-wal.before-restore").exists()
    assert db.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(db)
    try:
        assert [r[0] for r in conn.execute("SELECT username FROM auth_user ORDER BY id")] == ["alice", "bob"]
        for table in excluded_table_names():  # the tables are there, their rows are not
            assert conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone() == (0,)  # noqa: S608
    finally:
        conn.close()
    assert b"secret token" not in db.read_bytes()
    # check-panel-sqlite printed "ok", two users and no session.
    assert re.search(r">>> check-panel-sqlite\nok\n2\n0\n", printed), printed


def the_old_panel_data_dir(work: Path) -> Path:
    """A data directory with a broken database and its stale WAL, to be moved aside."""
    data_dir = work / "var"
    data_dir.mkdir()
    (data_dir / "db.sqlite3").write_bytes(b"the broken old database")
    (data_dir / "db.sqlite3-wal").write_bytes(b"stale wal")
    return data_dir


def source_steps(work: Path, shop: str, newdb: str, data_dir: Path):
    """Step 7 and 8, with the values the guide tells its reader to set."""
    return [
        ("restore-folder", {"SOURCE": "office-files", "TARGET": str(work / "srv" / "office")}),
        ("restore-postgresql", {"DUMP": f"restore/shop-database/{shop}.pgdump", "NEWDB": newdb}),
        "check-panel-sqlite",
        ("restore-panel-sqlite", {"BACKUPSITE_DATA_DIR": str(data_dir)}),
    ]


def pg_env(server) -> dict[str, str]:
    return {"PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": server.user, "PGPASSWORD": server.password}


def test_the_plain_backup_restores_by_the_guide(installation, tmp_path):
    job = installation["jobs"]["Plain backup"]
    tree, server = installation["tree"], installation["server"]
    run(job)
    (tree / "docs" / "notes.md").write_text("# Notes\nchanged after the first backup\n")
    newest = run(job)
    work = tmp_path / "work"
    work.mkdir()
    copy = copy_of_the_destination(installation["backups"], job, work)
    # What an interrupted upload leaves, and an archive without its manifest: not backups.
    (copy / f".{job.slug}-999.tar.zst.partial").write_bytes(b"half an archive")
    (copy / f"{job.slug}-998.tar.zst").write_bytes(b"no manifest")
    data_dir = the_old_panel_data_dir(work)
    newdb = f"{installation['shop']}_restored"

    code, printed = follow(
        PLAIN_STEPS + source_steps(work, installation["shop"], newdb, data_dir),
        cwd=copy,
        path=stock_path(work, server),
        env=pg_env(server),
    )
    assert code == 0, printed
    assert f"{newest.archive_name}: OK" in printed
    assert "Every file matches the manifest." in printed
    assert "shop-database/  Shop database (postgresql)" in printed
    assert trees_identical(tree, copy / "restore" / "office-files")  # the newest backup, not the first
    assert trees_identical(tree, work / "srv" / "office")
    assert (
        pg_rows(server, newdb)
        == pg_rows(server, installation["shop"])
        == [
            (1, "Zoë Ünïcødé", "first"),
            (2, "Bob", None),
        ]
    )
    assert "customers" in printed  # psql's \dt+
    assert_panel_restored(data_dir, printed)


def test_the_encrypted_backup_restores_by_the_guide_with_the_password(installation, tmp_path):
    job = installation["jobs"]["Encrypted backup"]
    tree, server = installation["tree"], installation["server"]
    newest = run(job)
    assert newest.archive_name.endswith(".tar.zst.age")
    work = tmp_path / "work"
    work.mkdir()
    copy = copy_of_the_destination(installation["backups"], job, work)
    assert (copy / KEY_FILE_NAME).is_file() and (copy / newest.key_file_name).is_file()
    data_dir = the_old_panel_data_dir(work)
    newdb = f"{installation['shop']}_restored_enc"

    code, printed = follow(
        ENCRYPTED_STEPS + source_steps(work, installation["shop"], newdb, data_dir),
        cwd=copy,
        path=stock_path(work, server),
        env=pg_env(server),
        password=PASSWORD,
    )
    assert code == 0, printed
    assert newest.key_file_name != KEY_FILE_NAME
    assert f'Enter passphrase for identity file "{newest.key_file_name}"' in printed  # as the guide quotes it
    assert f"{newest.archive_name}: OK" in printed
    assert "Every file matches the manifest." in printed
    assert trees_identical(tree, copy / "restore" / "office-files")
    assert trees_identical(tree, work / "srv" / "office")
    assert pg_rows(server, newdb) == pg_rows(server, installation["shop"])
    assert_panel_restored(data_dir, printed)


def test_an_older_backup_of_a_replaced_key_restores_by_the_guide_with_its_password(installation, tmp_path):
    """The job's key was replaced (no encryption, then a new password): the older
    backup opens with the key file its manifest names and the password of its time;
    ``backupsite-key.age`` is the newest key and would not open it."""
    job = installation["jobs"]["Encrypted backup"]
    queued = services.create_run(job)  # an hour ago: its name ({date}-{time}) differs from the newest's
    Run.objects.filter(pk=queued.pk).update(created_at=queued.created_at - timedelta(hours=1))
    older = services.execute_run(queued.pk)
    assert older.state == Run.State.SUCCEEDED, older.error
    job.encryption, job.age_recipient, job.age_identity_wrapped = Job.Encryption.NONE, "", ""  # as the wizard does
    job.save()
    job.set_backup_password("a new password, not the first")
    job.save()
    newest = run(job)
    assert newest.key_file_name != older.key_file_name
    work = tmp_path / "work"
    work.mkdir()
    copy = copy_of_the_destination(installation["backups"], job, work)
    path = stock_path(work, installation["server"])

    steps = [("check-archive", {"ARCHIVE": older.archive_name}), "extract-encrypted", "check-files"]
    code, printed = follow(steps, cwd=copy, path=path, password=PASSWORD)
    assert code == 0, printed
    assert f'Enter passphrase for identity file "{older.key_file_name}"' in printed
    assert f"{older.archive_name}: OK" in printed and "Every file matches the manifest." in printed
    assert trees_identical(installation["tree"], copy / "restore" / "office-files")


def test_the_guides_checks_catch_a_wrong_password_and_a_damaged_file(installation, tmp_path):
    job = installation["jobs"]["Encrypted backup"]
    run(job)
    work = tmp_path / "work"
    work.mkdir()
    copy = copy_of_the_destination(installation["backups"], job, work)
    path = stock_path(work, installation["server"])

    code, printed = follow(["newest", "extract-encrypted"], cwd=copy, path=path, password="not the password")
    assert code != 0
    assert "incorrect passphrase" in printed  # the guide's table of messages quotes it

    shutil.rmtree(copy / "restore")
    code, printed = follow(["newest", "extract-encrypted"], cwd=copy, path=path, password=PASSWORD)
    assert code == 0, printed
    victim = copy / "restore" / "office-files" / "docs" / "2026" / "invoice.txt"
    victim.write_text(victim.read_text().replace("42", "43", 1))
    code, printed = follow(["newest", "check-files"], cwd=copy, path=path)
    assert code != 0
    assert "restore/office-files/docs/2026/invoice.txt: FAILED" in printed
    assert "Every file matches the manifest." not in printed

    archive = next(copy.glob("*.tar.zst.age"))
    with open(archive, "r+b") as fh:  # one flipped byte in the middle of the archive
        fh.seek(archive.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    code, printed = follow(["newest", "check-archive"], cwd=copy, path=path)
    assert code != 0
    assert f"{archive.name}: FAILED" in printed and "did NOT match" in printed


def test_a_mysql_database_restores_by_the_guide(db, folders, tmp_path, mariadb_server):
    shop = mariadb_server.create_database()
    mariadb_server.sql(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, photo BLOB);"
        "INSERT INTO customers VALUES (1, 'Zoë Ünïcødé', 0x00FF10), (2, 'Bob', NULL);",
        shop,
    )
    source = Source.objects.create(
        name="Shop database",
        kind="mysql",
        settings=mariadb_server.settings(shop),
        secrets={"password": mariadb_server.password},
    )
    job = Job.objects.create(name="Shop backup")
    job.sources.set([source])
    job.destinations.set(
        [Destination.objects.create(name="Local disk", kind="local", settings={"path": str(folders["backups"])})]
    )
    run(job)
    work = tmp_path / "work"
    work.mkdir()
    copy = copy_of_the_destination(folders["backups"], job, work)
    # ~/.my.cnf as the guide shows it, with this server's values.
    (sample,) = MY_CNF.findall(GUIDE.read_text())
    keys = [line.split("=", 1)[0] for line in sample.splitlines()[1:]]
    assert keys == ["host", "port", "user", "password"]
    values = {"host": mariadb_server.host, "port": mariadb_server.port, "user": mariadb_server.user}
    values["password"] = mariadb_server.password
    home = work / "home"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\n" + "".join(f"{key}={values[key]}\n" for key in keys))
    (home / ".my.cnf").chmod(0o600)
    bin_dir = stock_path(work, None)
    (Path(bin_dir) / "mysql").symlink_to(require_binary("mysql"))
    newdb = f"{shop}_restored"

    code, printed = follow(
        ["newest", "extract-plain", ("restore-mysql", {"DUMP": f"restore/shop-database/{shop}.sql", "NEWDB": newdb})],
        cwd=copy,
        path=bin_dir,
    )
    assert code == 0, printed
    assert "customers" in printed  # SHOW TABLES
    query = "SELECT id, name, HEX(photo) FROM customers ORDER BY id"
    assert (
        mariadb_server.sql(query, newdb)
        == mariadb_server.sql(query, shop)
        == [
            ["1", "Zoë Ünïcødé", "00FF10"],
            ["2", "Bob", "NULL"],
        ]
    )
