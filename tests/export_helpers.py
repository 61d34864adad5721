"""Shared by the planning-export tests: read a written file back with openpyxl, and what
each database value must look like in it."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import openpyxl

from jobs.exports.xlsx import parse_iso


def demo_planning(folders: dict, tmp_path: Path, today: dt.date) -> dict:
    """The demo planning database made for *today* (a SQLite source) and an export of its
    datasets into ``planning/`` of a local destination (written through configwrite)."""
    from backupsite import configwrite
    from destinations.models import Destination
    from jobs.exports import demo
    from jobs.models import ExportDataset, PlanningExport, Source

    path = demo.make_planning_database(tmp_path / "planning.sqlite3", today)
    source = Source.objects.create(name="Planning", kind="sqlite", settings={"path": str(path)})
    destination = Destination.objects.create(name="Local", kind="local", settings={"path": str(folders["backups"])})
    export = PlanningExport(name="Newsroom", source=source, folder="planning", report_to="desk@example.com")
    configwrite.save(export, m2m={"destinations": [destination]})
    for position, dataset in enumerate(demo.DATASETS):
        ExportDataset.objects.create(export=export, position=position, **dataset)
    return {
        "export": export,
        "path": path,
        "today": today,
        "out": folders["backups"] / "planning",
        "destination": destination,
    }


def read_sheet(path: Path):
    """(sheet, header, rows) of the only sheet of the workbook at *path*, values as
    openpyxl reads them (a real reader, not the writer's own objects)."""
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames and len(wb.sheetnames) == 1
    ws = wb[wb.sheetnames[0]]
    rows = [[cell.value for cell in row] for row in ws.iter_rows()]
    return ws, rows[0] if rows else [], rows[1:]


def expected_cell(value, tz, *, text_dates: bool = False):
    """The value a database value must read back as: aware datetimes in the site's zone
    (naive), ISO text as dates where the driver stores dates as text, Decimal as the
    number it is, NULL as an empty cell."""
    if value is None:
        return None
    if isinstance(value, str) and text_dates:
        parsed = parse_iso(value)
        if parsed is not None:
            value = parsed
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(tz).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        # openpyxl reads every date cell back as a datetime at midnight
        return dt.datetime.combine(value, dt.time(0))
    if isinstance(value, decimal.Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    return value


def assert_same_cells(path: Path, columns, db_rows, tz, *, text_dates: bool = False, title: str | None = None):
    """The file holds exactly *columns* as its header and *db_rows*, cell by cell."""
    ws, header, rows = read_sheet(path)
    if title is not None:
        assert ws.title == title
    assert header == list(columns)
    assert len(rows) == len(db_rows), (len(rows), len(db_rows))
    for number, (got, want) in enumerate(zip(rows, db_rows, strict=True), start=2):
        want = [expected_cell(v, tz, text_dates=text_dates) for v in want]
        for column, (g, w) in enumerate(zip(got, want, strict=True)):
            if isinstance(w, float) and isinstance(g, int | float):
                assert abs(g - w) < 1e-9, (number, column, g, w)
            else:
                assert g == w, f"row {number}, column {header[column]!r}: {g!r} != {w!r}"
    return ws
