"""The sheet writer on its own: every cell read back with openpyxl."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
import zipfile
from zoneinfo import ZoneInfo

import pytest

from jobs.exports.xlsx import MAX_WIDTH, MIN_WIDTH, SheetError, check_sheet_title, write_sheet
from tests.export_helpers import assert_same_cells, read_sheet

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC


def test_values_keep_their_types_and_aware_times_move_to_the_site_zone(tmp_path):
    columns = ["id", "Titel", "Tag", "Beginn", "Budget", "Anteil", "bestätigt", "Notiz"]
    rows = [
        (
            1,
            "Übergabe an Malmö",
            dt.date(2026, 11, 24),
            dt.datetime(2026, 11, 24, 8, 30, tzinfo=UTC),
            decimal.Decimal("1250.50"),
            0.25,
            True,
            None,
        ),
        (
            2,
            "Möte i Göteborg",
            dt.date(2026, 11, 25),
            dt.datetime(2026, 11, 25, 9, 0),
            decimal.Decimal("7"),
            -1.5,
            False,
            "åäö ÅÄÖ ß",
        ),
    ]
    path = tmp_path / "plan.xlsx"
    result = write_sheet(path, "Planung", columns, iter(rows), tz=BERLIN)
    assert (result.rows, result.columns) == (2, 8)
    ws = assert_same_cells(path, columns, rows, BERLIN, title="Planung")
    # 08:30 UTC is 09:30 in Berlin (Excel has no time zones: the site's wall time).
    assert ws["D2"].value == dt.datetime(2026, 11, 24, 9, 30)
    assert ws["C2"].is_date and ws["D2"].is_date and ws["C2"].number_format == "yyyy-mm-dd"
    assert ws["D2"].number_format == "yyyy-mm-dd hh:mm"
    assert ws["E2"].data_type == "n" and ws["F3"].data_type == "n" and ws["G2"].data_type == "b"
    assert ws["H2"].value is None  # NULL: an empty cell
    assert result.column_kinds == ["integer", "text", "date", "datetime", "number", "number", "boolean", "text"]


def test_the_header_is_bold_frozen_and_filtered_and_widths_are_sensible(tmp_path):
    columns = ["id", "a rather long column name", "text"]
    rows = [(n, "x", "word " * (n % 30)) for n in range(250)]
    path = tmp_path / "w.xlsx"
    write_sheet(path, "Sheet", columns, iter(rows))
    ws, _header, data = read_sheet(path)
    assert all(cell.font.b for cell in ws[1]) and not ws["A2"].font.b
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == "A1:C251"
    widths = {key: dim.width for key, dim in ws.column_dimensions.items()}
    assert widths["A"] == MIN_WIDTH  # short numbers: the minimum
    assert widths["B"] == len("a rather long column name") + 3  # the header (and its filter button)
    assert MIN_WIDTH < widths["C"] <= MAX_WIDTH
    assert len(data) == 250
    with zipfile.ZipFile(path) as archive:  # the hidden name Excel writes with a filter
        assert "_xlnm._FilterDatabase" in archive.read("xl/workbook.xml").decode()


@pytest.mark.parametrize(
    "text",
    [
        '=HYPERLINK("http://x","y")',
        "=1+1",
        "+49 30 1234",
        "-5",
        "@SUM(A1:A2)",
        "\tindented",
        "\rcarriage",
        "#N/A",
        "#DIV/0!",
    ],
)
def test_text_that_looks_like_a_formula_stays_text(tmp_path, text):
    """RELIABILITY 21: no cell becomes a formula (or an error value)."""
    path = tmp_path / "f.xlsx"
    result = write_sheet(path, "S", ["title"], iter([(text,)]))
    assert result.neutralised_cells == 1
    ws, _, rows = read_sheet(path)
    assert rows == [[text]]
    assert ws["A2"].data_type == "s"
    assert ws["A2"].quotePrefix  # as if typed with a leading apostrophe
    with zipfile.ZipFile(path) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet and 't="inlineStr"' in sheet


def test_a_header_that_looks_like_a_formula_stays_text(tmp_path):
    path = tmp_path / "h.xlsx"
    write_sheet(path, "S", ["=cmd|' /C calc'!A0"], iter([(1,)]))
    ws, header, _ = read_sheet(path)
    assert header == ["=cmd|' /C calc'!A0"] and ws["A1"].data_type == "s"


def test_an_empty_result_is_a_valid_file_with_its_header(tmp_path):
    path = tmp_path / "empty.xlsx"
    result = write_sheet(path, "Leer", ["id", "Titel"], iter([]))
    assert result.rows == 0
    ws, header, rows = read_sheet(path)
    assert header == ["id", "Titel"] and rows == []
    assert ws.auto_filter.ref == "A1:B1"


def test_odd_values_become_text_or_numbers_that_read_back(tmp_path):
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    rows = [
        (
            2**60,
            float("nan"),
            decimal.Decimal("NaN"),
            b"\x00\xff",
            ident,
            {"ort": "Malmö"},
            "bell\x07here",
            dt.timedelta(hours=1, minutes=30),
            "x" * 40_000,
        )
    ]
    path = tmp_path / "odd.xlsx"
    result = write_sheet(path, "S", [f"c{n}" for n in range(9)], iter(rows))
    _, _, back = read_sheet(path)
    big, nan, dnan, blob, uid, obj, bell, duration, long = back[0]
    assert big == str(2**60)  # Excel would round it
    assert nan == "nan" and dnan == "NaN"
    assert blob == "00ff" and uid == str(ident) and obj == '{"ort": "Malmö"}'
    assert bell == "bellhere" and result.cleaned_cells == 1
    assert duration == dt.timedelta(hours=1, minutes=30)
    assert len(long) == 32_767 and result.truncated_cells == 1


def test_iso_text_becomes_dates_only_where_the_driver_stores_dates_as_text(tmp_path):
    rows = [("2026-11-24", "2026-11-24 09:30:00", "2026-11-24T08:30:00Z", "2026-11-24 is a Tuesday")]
    path = tmp_path / "d.xlsx"
    write_sheet(path, "S", ["a", "b", "c", "d"], iter(rows), tz=BERLIN, parse_text_dates=True)
    _, _, back = read_sheet(path)
    assert back == [
        [
            dt.datetime(2026, 11, 24),
            dt.datetime(2026, 11, 24, 9, 30),
            dt.datetime(2026, 11, 24, 9, 30),
            "2026-11-24 is a Tuesday",
        ]
    ]
    write_sheet(path, "S", ["a"], iter([("2026-11-24",)]))
    assert read_sheet(path)[2] == [["2026-11-24"]]


def test_progress_is_reported_and_sheet_titles_are_checked(tmp_path):
    seen = []
    write_sheet(tmp_path / "p.xlsx", "S", ["n"], ((n,) for n in range(2500)), progress=seen.append, progress_every=1000)
    assert seen[-1] == 2500 and len(seen) >= 3 and seen == sorted(seen)
    for bad in ("", "x" * 32, "a/b", "a[1]", "what?", "'quoted"):
        with pytest.raises(SheetError):
            check_sheet_title(bad)
    assert check_sheet_title("Termine 24.–28.") == "Termine 24.–28."


def test_datetimes_show_seconds_only_where_they_have_them(tmp_path):
    rows = [(dt.datetime(2026, 11, 24, 9, 30), dt.datetime(2026, 11, 24, 9, 30, 15), dt.time(14, 5), dt.time(1, 2, 3))]
    path = tmp_path / "s.xlsx"
    write_sheet(path, "S", ["a", "b", "c", "d"], iter(rows))
    ws, _, back = read_sheet(path)
    assert [c.number_format for c in ws[2]] == ["yyyy-mm-dd hh:mm", "yyyy-mm-dd hh:mm:ss", "hh:mm", "hh:mm:ss"]
    assert back == [list(rows[0])]
