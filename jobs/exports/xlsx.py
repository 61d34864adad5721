"""Rows → one ``.xlsx`` sheet, streamed (no Django here: the bench calls it directly).

:func:`write_sheet` takes the column names and an iterator of row tuples (straight from a
database cursor) and writes an openpyxl *write-only* workbook: rows go to disk as they
come, so memory stays flat however many rows there are (strings are written inline, not
collected into a shared-strings table). What the sheet looks like:

* row 1 is the header: bold, frozen (it stays visible when scrolling), with an
  autofilter over the whole table;
* column widths come from the header and the first :data:`SAMPLE_ROWS` rows (the
  widths must be written before the rows), between :data:`MIN_WIDTH` and
  :data:`MAX_WIDTH` characters;
* dates, datetimes and times are real date cells with ISO number formats, readable in
  every language: ``yyyy-mm-dd``, ``yyyy-mm-dd hh:mm`` (``hh:mm:ss`` where the value has
  seconds), ``hh:mm``. An aware datetime is converted to the site's time zone first
  (Excel has no time zones), a naive one is taken as it is. Where the driver stores
  dates as text (SQLite), a column whose first value is ISO text (``2026-11-24``,
  ``2026-11-24 09:30:00``, with an optional offset) becomes a date column: its values
  are parsed, and stay text where they do not parse;
* numbers stay numbers (int, float, Decimal), booleans stay booleans, NULL is an empty
  cell; integers beyond 2**53 (which Excel would round) and NaN/infinity are text;
* **formula injection** (OWASP "CSV injection", RELIABILITY 21): openpyxl would turn a
  string beginning with ``=`` into a formula and one like ``#N/A`` into an error value.
  Every string is stored as a string: one beginning with ``=``, ``+``, ``-``, ``@``, a tab
  or a carriage return (or equal to an error code) gets a string cell with Excel's
  *quote prefix* (as if typed with a leading apostrophe), so editing it in Excel or
  LibreOffice does not turn it into a formula either. The text itself is unchanged;
* characters XML cannot hold (control characters other than tab, CR and LF) are
  dropped, and text longer than a cell holds (32,767 characters) is cut; both are
  counted in the result so the run log can say so;
* durations (intervals) are duration cells (``[hh]:mm:ss``); bytes become hexadecimal
  text; anything else (UUIDs, JSON, arrays) its text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

from django.utils.translation import gettext as _
from openpyxl import Workbook
from openpyxl.cell import Cell, WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

#: The most rows one sheet holds (Excel and LibreOffice), header included.
MAX_SHEET_ROWS = 1_048_576
MAX_DATA_ROWS = MAX_SHEET_ROWS - 1
MAX_COLUMNS = 16_384
MAX_CELL_TEXT = 32_767
SAMPLE_ROWS = 100
MIN_WIDTH = 8
MAX_WIDTH = 60
DATETIME_FORMAT = "yyyy-mm-dd hh:mm"
DATETIME_SECONDS_FORMAT = "yyyy-mm-dd hh:mm:ss"
TIME_FORMAT = "hh:mm"
TIME_SECONDS_FORMAT = "hh:mm:ss"
#: First characters that make spreadsheet programs read text as a formula (OWASP).
RISKY_FIRST = frozenset("=+-@\t\r")
ERROR_CODES = frozenset(("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A"))
_ILLEGAL = re.compile(r"[\000-\010\013\014\016-\037]")
_EXACT_FLOAT = 2**53
#: Sheet titles: at most 31 characters, none of these.
SHEET_TITLE_FORBIDDEN = set("[]:*?/\\")


class SheetError(ValueError):
    """The result cannot become a sheet (too many rows or columns); shown to users."""


@dataclass
class SheetResult:
    rows: int = 0
    columns: int = 0
    #: Cells whose text had characters XML cannot hold (removed) or was too long (cut).
    cleaned_cells: int = 0
    truncated_cells: int = 0
    #: Text cells that would have been formulas (stored as text with a quote prefix).
    neutralised_cells: int = 0
    column_kinds: list[str] = field(default_factory=list)


def check_sheet_title(title: str) -> str:
    if not title or len(title) > 31 or any(c in SHEET_TITLE_FORBIDDEN for c in title) or title.startswith("'"):
        raise SheetError(
            _("A sheet title has 1 to 31 characters, none of [ ] : * ? / \\, and does not start with an apostrophe.")
        )
    return title


# --- values --------------------------------------------------------------------------
def kind_of(value) -> str:
    """A column's kind for widths and the Preview's "type" (by its values)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float | decimal.Decimal):
        return "number"
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time"
    if isinstance(value, dt.timedelta):
        return "duration"
    return "text"


class Converter:
    """Turns one database value into what openpyxl writes (a value or a styled cell),
    for the worksheet *ws* in the time zone *tz*. Values of the types openpyxl writes
    correctly as they are pass through untouched (the fast path)."""

    PASSTHROUGH = frozenset((type(None), bool, dt.date, dt.timedelta))

    def __init__(self, ws, tz: dt.tzinfo, *, parse_text_dates: bool = False) -> None:
        self.ws = ws
        self.tz = tz
        self.parse_text_dates = parse_text_dates
        self.result = SheetResult()
        self._styles: dict[str, object] = {}
        self._by_type: dict[type, Callable] = {
            str: self.text,
            int: self.integer,
            float: self.float_,
            decimal.Decimal: self.decimal_,
            dt.datetime: self.datetime,
            dt.time: self.time,
            bytes: self.binary,
            bytearray: self.binary,
            memoryview: self.binary,
        }

        #: One function per column, chosen by :meth:`plan` from the first rows.
        self._columns: list[Callable] | None = None

    def value(self, value):
        """Any database value as openpyxl takes it (the general path)."""
        if type(value) in self.PASSTHROUGH:
            return value
        return self._by_type.get(type(value), self.other)(value)

    def row(self, values: Sequence) -> list:
        """One database row as openpyxl's ``append`` takes it."""
        columns = self._columns
        if columns is None or len(columns) != len(values):
            value = self.value
            return [value(v) for v in values]
        return [convert(v) for convert, v in zip(columns, values, strict=True)]

    def plan(self, sample: Sequence[Sequence]) -> None:
        """Pick a fast function per column from the first non-NULL value each column has
        in *sample*: a value of that column's type takes a short path, anything else
        (NULL, a SQLite column holding mixed types) the general one. A SQLite text column
        is a date column when its first value is ISO text; its values are then parsed
        (and stay text where they do not parse)."""
        width = len(sample[0]) if sample else 0
        firsts: list = [None] * width
        for row in sample:
            for index, v in enumerate(row):
                if firsts[index] is None and v is not None:
                    firsts[index] = v
        self._columns = [self._column(first) for first in firsts]

    def _column(self, first) -> Callable:
        general = self.value
        kind = type(first)
        if kind is int:
            low, high = -_EXACT_FLOAT, _EXACT_FLOAT
            return lambda v: v if type(v) is int and low <= v <= high else general(v)
        if kind is str:
            if self.parse_text_dates and parse_iso(first) is not None:
                text = self.text
                return lambda v: text(v) if type(v) is str else general(v)
            plain = self.plain_text
            return lambda v: plain(v) if type(v) is str else general(v)
        if kind in (dt.date, bool, dt.timedelta):
            return lambda v: v if type(v) is kind else general(v)
        return general

    # --- one value each (never None) ----------------------------------------------------
    def integer(self, value: int):
        return value if -_EXACT_FLOAT <= value <= _EXACT_FLOAT else self.text_cell(str(value))

    def float_(self, value: float):
        return value if math.isfinite(value) else self.text_cell(str(value))

    def decimal_(self, value: decimal.Decimal):
        return value if value.is_finite() else self.text_cell(str(value))

    def datetime(self, value: dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(self.tz).replace(tzinfo=None)
        return self._dated(value, DATETIME_SECONDS_FORMAT if value.second or value.microsecond else DATETIME_FORMAT)

    def time(self, value: dt.time):
        value = value.replace(tzinfo=None)
        return self._dated(value, TIME_SECONDS_FORMAT if value.second or value.microsecond else TIME_FORMAT)

    def _dated(self, value, number_format: str):
        """A date cell with *number_format*, its style built once per format (setting
        ``number_format`` on every cell would look the format up every time)."""
        if self.ws is None:  # (the Preview converts values without a sheet)
            return value
        style = self._styles.get(number_format)
        if style is None:
            template = WriteOnlyCell(self.ws)
            template.number_format = number_format
            style = self._styles[number_format] = template._style
        # Cell.__init__ without its work: every date cell of a format shares one style
        # array (the writer only reads it); openpyxl sets row and column when it writes.
        cell = _DateCell.__new__(_DateCell)
        cell.parent, cell._style, cell._value, cell.data_type = self.ws, style, value, "d"
        cell._hyperlink = cell._comment = None
        cell.row = cell.column = 1
        return cell

    def binary(self, value) -> str:
        return bytes(value).hex()

    def text(self, value: str):
        if self.parse_text_dates:
            parsed = parse_iso(value)
            if parsed is not None:
                return self.datetime(parsed) if type(parsed) is dt.datetime else parsed
        return self.plain_text(value)

    def plain_text(self, value: str):
        if value[:1] in RISKY_FIRST or len(value) > MAX_CELL_TEXT or value in ERROR_CODES or _ILLEGAL.search(value):
            return self._odd_text(value)
        return value  # (the usual case: checked, nothing to do)

    def _odd_text(self, value: str):
        if _ILLEGAL.search(value):
            value = _ILLEGAL.sub("", value)
            self.result.cleaned_cells += 1
        if len(value) > MAX_CELL_TEXT:
            value = value[:MAX_CELL_TEXT]
            self.result.truncated_cells += 1
        if value[:1] in RISKY_FIRST or value in ERROR_CODES:
            self.result.neutralised_cells += 1
            return self.text_cell(value)
        return value

    def text_cell(self, value: str):
        """A string cell whatever the text looks like, with the quote prefix."""
        cell = WriteOnlyCell(self.ws)
        cell._value = value
        cell.data_type = "s"
        cell.quotePrefix = True
        return cell

    def other(self, value):
        if isinstance(value, dict | list | tuple):
            return self.plain_text(json.dumps(value, ensure_ascii=False, default=str))
        return self.plain_text(str(value))


class _DateCell(Cell):
    """A date cell built by :meth:`Converter._dated`. openpyxl's ``append()`` first tries
    every value as a plain value and formats the ``repr`` of a cell into the message of
    the exception it then discards: a cheap ``repr`` saves about a tenth of the time of a
    sheet with three date columns (measured with bench/export.py)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<date cell>"


def parse_iso(text: str) -> dt.date | dt.datetime | None:
    """``2026-11-24`` → a date, ``2026-11-24 09:30[:00[.123]][Z|+01:00]`` → a datetime
    (aware if it has an offset); None when the text is not one of those."""
    if len(text) < 10 or text[4:5] != "-" or text[7:8] != "-" or not text[:4].isdigit():
        return None
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        if text[10:11] in ("T", " ") and text[13:14] == ":" and len(text) <= 35:
            return dt.datetime.fromisoformat(text)  # (Python 3.11: offsets and "Z" too)
    except ValueError:
        return None
    return None


def _display_length(value) -> int:
    if value is None:
        return 0
    if isinstance(value, dt.datetime):
        return 19 if value.second or value.microsecond else 16
    if isinstance(value, dt.date):
        return 10
    if isinstance(value, str):
        return max((len(line) for line in value.splitlines()), default=0)
    return len(str(value))


def column_widths(header: Sequence[str], sample: Iterable[Sequence]) -> list[float]:
    """Characters per column: the longest of the header (plus room for the filter
    button) and the sampled values, within MIN_WIDTH..MAX_WIDTH."""
    longest = [len(str(name)) + 3 for name in header]
    for row in sample:
        for index, value in enumerate(row):
            length = _display_length(value) + 1
            if length > longest[index]:
                longest[index] = length
    return [float(min(MAX_WIDTH, max(MIN_WIDTH, width))) for width in longest]


# --- the sheet ---------------------------------------------------------------------------
def write_sheet(
    path: Path,
    sheet_title: str,
    header: Sequence[str],
    rows: Iterable[Sequence],
    *,
    tz: dt.tzinfo | str = "UTC",
    parse_text_dates: bool = False,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 1000,
) -> SheetResult:
    """Write *rows* (tuples in the order of *header*) as the only sheet of a new
    workbook at *path*; returns what was written. Raises :class:`SheetError` beyond the
    limits of a sheet. *progress* gets the number of rows written every
    *progress_every* rows."""
    if isinstance(tz, str):
        tz = ZoneInfo(tz)
    header = [str(name) for name in header]
    if not header:
        raise SheetError("The query returns no columns.")
    if len(header) > MAX_COLUMNS:
        raise SheetError(f"The query returns {len(header)} columns; a sheet holds at most {MAX_COLUMNS}.")
    rows = iter(rows)
    sample = list(islice(rows, SAMPLE_ROWS))

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title=check_sheet_title(sheet_title))
    try:
        return _write(wb, ws, path, header, sample, rows, tz, parse_text_dates, progress, progress_every)
    except BaseException:
        _discard(ws)
        raise


def _discard(ws) -> None:
    """After a failure or a cancel mid-sheet: close the write-only sheet and remove its
    temporary file (openpyxl keeps the rows so far in ``/tmp`` until the process exits,
    and a worker lives for weeks)."""
    writer = ws._writer  # openpyxl's WorksheetWriter: it owns the temporary file
    if writer is None:
        return
    try:
        ws.close()  # ends the rows, then the XML, in order
    except Exception:  # noqa: BLE001 - a half-written stream may refuse; close what is left
        with contextlib.suppress(Exception):
            writer.close()
    with contextlib.suppress(OSError, ValueError):
        writer.cleanup()


def _write(wb, ws, path, header, sample, rows, tz, parse_text_dates, progress, progress_every) -> SheetResult:
    converter = Converter(ws, tz, parse_text_dates=parse_text_dates)
    result = converter.result
    result.columns = len(header)

    converter.plan(sample)
    converted_sample = [converter.row(row) for row in sample]
    for index, width in enumerate(column_widths(header, _plain(converted_sample)), start=1):
        ws.column_dimensions[get_column_letter(index)].width = width
    kinds = [""] * len(header)
    for row in _plain(converted_sample):
        for index, value in enumerate(row):
            if not kinds[index] and value is not None:
                kinds[index] = kind_of(value)
    result.column_kinds = [k or "text" for k in kinds]
    ws.freeze_panes = "A2"

    bold = Font(bold=True)
    header_cells = []
    for name in header:
        value = converter.plain_text(name)  # a column alias can look like a formula too
        cell = value if isinstance(value, Cell) else WriteOnlyCell(ws, value)
        cell.font = bold
        header_cells.append(cell)
    ws.append(header_cells)

    count = 0
    append, convert = ws.append, converter.row
    for row in converted_sample:
        append(row)
    count = len(converted_sample)
    if progress and count:
        progress(count)
    next_report = count + progress_every
    for row in rows:
        append(convert(row))
        count += 1
        if count >= next_report:
            if count > MAX_DATA_ROWS:
                raise SheetError(f"The query returns more than {MAX_DATA_ROWS:,} rows, the most a sheet holds.")
            next_report = count + progress_every
            if progress:
                progress(count)
    if count > MAX_DATA_ROWS:
        raise SheetError(f"The query returns more than {MAX_DATA_ROWS:,} rows, the most a sheet holds.")
    result.rows = count
    last = f"{get_column_letter(len(header))}{count + 1}"
    # (openpyxl adds the hidden _FilterDatabase name Excel and LibreOffice expect.)
    ws.auto_filter.ref = f"A1:{last}"
    wb.save(path)
    if progress:
        progress(count)
    return result


def _plain(rows: list[list]) -> Iterator[list]:
    """Rows with styled cells replaced by their values (widths, kinds)."""
    for row in rows:
        yield [value._value if isinstance(value, Cell) else value for value in row]


__all__ = [
    "MAX_DATA_ROWS",
    "SheetError",
    "SheetResult",
    "check_sheet_title",
    "column_widths",
    "kind_of",
    "parse_iso",
    "write_sheet",
]
