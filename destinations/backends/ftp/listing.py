"""Directory listings: ``MLSD`` (RFC 3659, machine-readable), else ``LIST`` in the two
formats servers actually send (Unix ``ls -l`` and the DOS/IIS format). Only regular
files are returned; directories, links and anything unparseable are left out (a file
we cannot read the size of is not one of ours)."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable

from destinations.backends.base import RemoteFile


def parse_mlsd(lines: Iterable[str]) -> list[RemoteFile]:
    files = []
    for line in lines:
        facts_text, sep, name = line.partition(" ")
        if not sep or not name or "/" in name:
            continue
        facts = {}
        for fact in facts_text.split(";"):
            key, _, value = fact.partition("=")
            if key:
                facts[key.strip().lower()] = value
        if facts.get("type", "").lower() != "file":
            continue
        try:
            size = int(facts["size"])
        except (KeyError, ValueError):
            continue
        files.append(RemoteFile(name, size, _mlsd_time(facts.get("modify", ""))))
    return sorted(files, key=lambda f: f.name)


def _mlsd_time(value: str) -> float | None:
    """``YYYYMMDDHHMMSS[.sss]`` in UTC."""
    match = re.fullmatch(r"(\d{14})(\.\d+)?", value.strip())
    if not match:
        return None
    try:
        parsed = time.strptime(match.group(1), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(parsed) + (float(match.group(2)) if match.group(2) else 0.0)


_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}
_DOS = re.compile(
    r"\A(\d{2})-(\d{2})-(\d{2}|\d{4})\s+(\d{1,2}):(\d{2})\s*([AP]M)?\s+(<DIR>|\d+)\s+(.+)\Z", re.IGNORECASE
)


def parse_list(lines: Iterable[str], *, now: float | None = None) -> list[RemoteFile]:
    files = []
    for line in lines:
        remote = _parse_unix(line, now) if line[:1] in "-dlbcps" else _parse_dos(line)
        if remote is not None and remote.name not in (".", "..") and "/" not in remote.name:
            files.append(remote)
    return sorted(files, key=lambda f: f.name)


def _parse_unix(line: str, now: float | None) -> RemoteFile | None:
    """``-rw-r--r--   1 owner group  1234 Jan 01 12:00 name with spaces``"""
    if not line.startswith("-"):
        return None  # directories, links, devices
    parts = line.split(None, 8)
    if len(parts) != 9 or not parts[4].isdigit():
        return None
    return RemoteFile(parts[8], int(parts[4]), _unix_time(parts[5], parts[6], parts[7], now))


def _unix_time(month: str, day: str, year_or_time: str, now: float | None) -> float | None:
    """``Jan 01 12:00`` (within the last six months, year implied) or ``Jan 01 2024``."""
    number = _MONTHS.get(month[:3].lower())
    if number is None or not day.isdigit():
        return None
    try:
        if ":" in year_or_time:
            hour, minute = (int(x) for x in year_or_time.split(":", 1))
            current = time.gmtime(now if now is not None else time.time())
            year = current.tm_year
            stamp = calendar.timegm((year, number, int(day), hour, minute, 0))
            if stamp > calendar.timegm(current) + 86400:  # "in the future": last year's
                stamp = calendar.timegm((year - 1, number, int(day), hour, minute, 0))
            return float(stamp)
        return float(calendar.timegm((int(year_or_time), number, int(day), 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def _parse_dos(line: str) -> RemoteFile | None:
    """``01-31-24  01:05PM       1234 name`` (IIS, Windows servers)."""
    match = _DOS.match(line.strip())
    if not match or match.group(7).upper() == "<DIR>":
        return None
    month, day, year, hour, minute, ampm, size, name = match.groups()
    year_number = int(year) + (2000 if len(year) == 2 and int(year) < 70 else 1900 if len(year) == 2 else 0)
    hour_number = int(hour) % 12 + (12 if ampm and ampm.upper() == "PM" else 0) if ampm else int(hour)
    try:
        stamp = float(calendar.timegm((year_number, int(month), int(day), hour_number, int(minute), 0)))
    except (ValueError, OverflowError):
        stamp = None
    return RemoteFile(name, int(size), stamp)
