"""MySQL and MariaDB databases: ``mysqldump`` (MariaDB: ``mariadb-dump``) into the archive.

``--single-transaction`` gives a consistent snapshot of InnoDB tables without locking
them; routines, triggers and events are included; binary columns are written as hex so
the ``.sql`` file survives any editor or transfer. The password is written to a 0600
option file in the staging folder, passed as the *first* argument
(``--defaults-extra-file=``; the client only honours it there) and removed when the
client exits. Restore with stock tools::

    mysql <new database> < <database>.sql
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.utils.translation import gettext_lazy as _

from jobs.sources.base import SourceError, on_field
from jobs.sources.dbtools import (
    CONNECT_TIMEOUT,
    QUERY_TIMEOUT,
    ServerDumpSource,
    check_name,
    check_port,
    last_line,
    run_tool,
    temp_file,
)

DEFAULT_PORT = 3306
DUMP_OPTIONS = (
    "--single-transaction",  # a consistent InnoDB snapshot, no table locks
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",  # BLOB/BINARY columns as 0x…: the file is plain text
    "--no-tablespaces",  # MySQL 8 would otherwise need the PROCESS privilege
    "--default-character-set=utf8mb4",
)
SIZE_QUERY = (
    "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables WHERE table_schema = DATABASE()"
)


def mysql_tool(*names: str) -> str:
    """The first of *names* on PATH (MariaDB's own name first: on MariaDB 11 the
    ``mysql*`` names are deprecated aliases that warn on every call)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise SourceError(f"{names[-1]} is not installed (Debian/Ubuntu: apt-get install mariadb-client).")


def _option_value(value: str) -> str:
    """A value for a MySQL option file: double-quoted, with the escapes the client
    understands (so quotes, ``#``, backslashes and blanks survive)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("'", "\\'")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


@dataclass(frozen=True)
class MysqlConf:
    database: str
    host: str = "localhost"  # "localhost" means the local socket, as for every MySQL client
    port: int = DEFAULT_PORT
    user: str = ""

    @classmethod
    def parse(cls, data: dict) -> MysqlConf:
        data = data or {}
        return cls(
            database=on_field("database", check_name, data.get("database"), "database name", max_length=64),
            host=on_field("host", check_name, data.get("host"), "host name", required=False) or "localhost",
            port=on_field("port", check_port, data.get("port"), DEFAULT_PORT),
            user=on_field("user", check_name, data.get("user"), "user name", required=False, max_length=80),
        )

    def where(self) -> str:
        return f"“{self.database}” on {self.host}:{self.port}" + (f" as {self.user}" if self.user else "")

    def client_args(self) -> list[str]:
        """Connection options (no password) for a client's command line, after the
        option file: the command line wins over any ``~/.my.cnf``."""
        args = [f"--host={self.host}", f"--port={self.port}"]
        if self.user:
            args.append(f"--user={self.user}")
        return args


@contextlib.contextmanager
def option_file(directory: Path | None, password: str | None) -> Iterator[str]:
    """A 0600 ``[client]`` option file holding the password; yields the
    ``--defaults-extra-file=…`` argument. Removed when the block exits."""
    with temp_file(directory, "my-cnf") as path:
        # "loose-": mysqldump has no such option and would refuse the whole file.
        lines = ["[client]", f"loose-connect-timeout={CONNECT_TIMEOUT}"]
        if password:
            lines.append(f"password={_option_value(password)}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        yield f"--defaults-extra-file={path}"


def mysqldump(conf: MysqlConf, password: str | None, target: Path, staging: Path, *, what: str = "") -> None:
    """Dump *conf*'s database as SQL into *target*; SourceError on failure."""
    tool = mysql_tool("mariadb-dump", "mysqldump")
    with option_file(staging, password) as defaults, open(target, "wb") as out:
        args = [tool, defaults, *DUMP_OPTIONS, *conf.client_args(), "--", conf.database]
        code, stderr = run_tool(args, stdout=out)
    if code != 0:
        prefix = f"{what}: " if what else ""
        name = Path(tool).name
        raise SourceError(f"{prefix}{name} of {conf.where()} failed: {last_line(stderr, name, password)}")


def _query(conf: MysqlConf, password: str | None, sql: str, what: str) -> list[str]:
    """The tab-separated fields of the last output line of *sql* (the ``mysql`` client,
    password in a 0600 option file, QUERY_TIMEOUT); SourceError naming *what* failed."""
    tool = mysql_tool("mariadb", "mysql")
    name = Path(tool).name
    with option_file(None, password) as defaults, temp_file(None, "my-query") as out_path:
        args = [tool, defaults, *conf.client_args(), "--batch", "--skip-column-names"]
        args += [f"--execute={sql}", "--", conf.database]
        with open(out_path, "wb") as out:
            try:
                code, stderr = run_tool(args, stdout=out, timeout=QUERY_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise SourceError(f"{what} {conf.where()}: no answer within {QUERY_TIMEOUT} s.") from None
        output = out_path.read_text("utf-8", "replace").strip()
    if code != 0:
        raise SourceError(f"{what} {conf.where()}: {last_line(stderr, name, password)}")
    lines = output.splitlines()
    if not lines:
        raise SourceError(f"{what} {conf.where()}: unexpected answer from {name}.")
    return lines[-1].split("\t")


def database_size(conf: MysqlConf, password: str | None) -> int:
    fields = _query(conf, password, SIZE_QUERY, "Cannot measure")
    try:
        return int(float(fields[-1]))
    except ValueError:
        raise SourceError(f"Cannot measure {conf.where()}: unexpected answer from the client.") from None


def server_info(conf: MysqlConf, password: str | None) -> tuple[str, int]:
    """(the server's version, the database's size in bytes)."""
    sql = f"SELECT VERSION(), ({SIZE_QUERY})"
    fields = _query(conf, password, sql, "Cannot connect to")
    try:
        version, size = fields[0], int(float(fields[1]))
    except (ValueError, IndexError):
        raise SourceError(f"Cannot connect to {conf.where()}: unexpected answer from the client.") from None
    family = "MariaDB" if "mariadb" in version.lower() else "MySQL"
    return f"{family} {version}", size


class MysqlSource(ServerDumpSource):
    kind = "mysql"
    label = _("MySQL/MariaDB database")
    help_text = _("One MySQL or MariaDB database, dumped as SQL with mysqldump (restored with the mysql client).")
    form_class_path = "jobs.sources.forms.MysqlForm"
    title = "MySQL"
    conf_class = MysqlConf
    temp_prefix = "mysqldump"
    dump_suffix = ".sql"
    size_of = staticmethod(database_size)
    info_of = staticmethod(server_info)

    def write_dump(self, target: Path, staging: Path) -> None:
        mysqldump(self.conf, self._password, target, staging, what=self.what)

    @classmethod
    def restore_into(cls, dump_path: Path, database_url: str, *, allow_panel_database: bool = False) -> None:
        """Feed a ``.sql`` dump to the ``mysql`` client, into the existing database the
        URL names (``mysql://user:password@host:port/name``); never over the panel's own
        live database unless *allow_panel_database*."""
        conf, password = cls.restore_target(dump_path, database_url, "mysql", allow_panel_database)
        tool = mysql_tool("mariadb", "mysql")
        name = Path(tool).name
        with option_file(None, password) as defaults, open(dump_path, "rb") as dump:
            args = [tool, defaults, *conf.client_args(), "--batch", "--", conf.database]
            code, stderr = run_tool(args, stdin=dump)
        if code != 0:
            raise SourceError(f"Restoring into {conf.where()} failed: {last_line(stderr, name, password)}")
