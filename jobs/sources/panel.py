"""The panel's own database, for disaster recovery of backupsite itself."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings as django_settings
from django.db import connections

from jobs.engine import Entry
from jobs.engine.archive import FILE
from jobs.sources.base import SourceError, SourceKind


class PanelDatabaseSource(SourceKind):
    """backupsite's own database, for disaster recovery of the panel itself."""

    kind = "panel_database"
    label = "Panel database"

    def describe(self) -> str:
        return f"backupsite's own database ({connections['default'].vendor})"

    def measure(self) -> tuple[int, int]:
        db = django_settings.DATABASES["default"]
        if db["ENGINE"].endswith("sqlite3"):
            path = Path(db["NAME"])
            size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
            return size, 1
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            return int(cursor.fetchone()[0]), 1

    @contextlib.contextmanager
    def entries(self, staging, on_error):
        db = django_settings.DATABASES["default"]
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".panel-db-", suffix=".partial", dir=staging)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if db["ENGINE"].endswith("sqlite3"):
                # The online backup API copies a consistent snapshot of a live database.
                src = sqlite3.connect(f"file:{db['NAME']}?mode=ro", uri=True, timeout=60)
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
                    src.close()
                arcname = f"{self.slug}/backupsite.sqlite3"
            elif db["ENGINE"].endswith("postgresql"):
                _pg_dump(db, tmp)
                arcname = f"{self.slug}/backupsite.pgdump"
            else:
                raise SourceError(f"Backing up a {db['ENGINE']} panel database is not supported.")
            yield iter([Entry(arcname, FILE, str(tmp))])
        finally:
            tmp.unlink(missing_ok=True)


def _pg_dump(db: dict, target: Path) -> None:
    env = {**os.environ, "PGPASSWORD": db.get("PASSWORD") or ""}  # never on the command line
    args = ["pg_dump", "-Fc", "--no-password", "-f", str(target)]
    if db.get("HOST"):
        args += ["-h", str(db["HOST"])]
    if db.get("PORT"):
        args += ["-p", str(db["PORT"])]
    if db.get("USER"):
        args += ["-U", str(db["USER"])]
    args.append(str(db["NAME"]))
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SourceError("pg_dump is not installed.") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise SourceError(f"pg_dump failed: {last[:300]}")
