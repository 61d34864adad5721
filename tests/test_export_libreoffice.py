"""The files open in LibreOffice: ``soffice --headless --convert-to csv`` of each written
file matches the database, row by row (``libreoffice-calc`` is installed by .ci/run)."""

from __future__ import annotations

import csv
import datetime as dt
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.utils import timezone

from backupsite import configwrite
from destinations.models import Destination
from jobs.exports import demo, service
from jobs.exports.xlsx import parse_iso
from jobs.models import ExportDataset, ExportRun, PlanningExport, Source
from tests.conftest import require_binary

# Comma, double quote, UTF-8 (76), from the first row: LibreOffice's CSV filter options.
CSV_FILTER = "csv:Text - txt - csv (StarCalc):44,34,76,1"


def as_csv_text(value) -> str:
    """How LibreOffice writes a database value in CSV with the sheet's number formats
    (ISO dates, General numbers)."""
    if value is None:
        return ""
    if isinstance(value, str):
        parsed = parse_iso(value)  # SQLite's ISO text became date cells
        if isinstance(parsed, dt.datetime):
            return parsed.strftime("%Y-%m-%d %H:%M:%S" if parsed.second else "%Y-%m-%d %H:%M")
        if isinstance(parsed, dt.date):
            return parsed.isoformat()
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.slow
def test_libreoffice_reads_every_file_and_its_csv_matches_the_database(db, folders, tmp_path):
    soffice = require_binary("soffice")
    today = timezone.localdate()
    path = demo.make_planning_database(tmp_path / "planning.sqlite3", today)
    source = Source.objects.create(name="Planning", kind="sqlite", settings={"path": str(path)})
    destination = Destination.objects.create(name="Local", kind="local", settings={"path": str(folders["backups"])})
    export = PlanningExport(name="Newsroom", source=source)
    configwrite.save(export, m2m={"destinations": [destination]})
    for position, dataset in enumerate(demo.DATASETS):
        ExportDataset.objects.create(export=export, position=position, **dataset)
    run = service.execute(service.create_run(export).pk)
    assert run.state == ExportRun.State.SUCCEEDED, run.error

    out = tmp_path / "csv"
    profile = Path(tempfile.mkdtemp(prefix="backupsite-lo-"))
    files = [str(folders["backups"] / d["file_name"]) for d in demo.DATASETS]
    result = subprocess.run(
        [
            soffice,
            f"-env:UserInstallation={profile.as_uri()}",
            "--headless",
            "--norestore",
            "--convert-to",
            CSV_FILTER,
            "--outdir",
            str(out),
            *files,
        ],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    start, end = f"{today} 00:00:00", f"{today + dt.timedelta(days=5)} 00:00:00"
    conn = sqlite3.connect(path)
    for dataset in demo.DATASETS:
        cursor = conn.execute(
            dataset["sql"].replace("%(start)s", ":start").replace("%(end)s", ":end"), {"start": start, "end": end}
        )
        expected = [[c[0] for c in cursor.description]] + [[as_csv_text(v) for v in row] for row in cursor]
        with open(out / dataset["file_name"].replace(".xlsx", ".csv"), newline="", encoding="utf-8") as fh:
            got = list(csv.reader(fh))
        assert len(got) == len(expected) > 1
        for number, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
            for column, (gv, ev) in enumerate(zip(g, e, strict=True)):
                try:
                    same = abs(float(gv) - float(ev)) < 1e-9
                except ValueError:
                    same = gv == ev
                assert same, f"{dataset['file_name']} row {number}, column {expected[0][column]!r}: {gv!r} != {ev!r}"
    conn.close()
    # The title that looks like a formula is text in LibreOffice too, not its result.
    topics = (out / "topics.csv").read_text(encoding="utf-8")
    assert demo.FORMULA_TITLE.replace('"', '""') in topics
