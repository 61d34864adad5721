"""The demo planning database: a SQLite file of a small newsroom's topics and
appointments, spread over the weeks around the day it is made, in German and Swedish
(umlauts, å, ß), with rows before and after the export's window and one title that
begins with ``=`` (it must arrive as text, never as a formula). ``loaddemo`` makes it
under the data dir and points the demo export at it; the tests use it too."""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

from backupsite.private import FILE_MODE

SCHEMA = """
CREATE TABLE topics (
    id INTEGER PRIMARY KEY,
    day DATE NOT NULL,
    title TEXT NOT NULL,
    desk TEXT NOT NULL,
    status TEXT NOT NULL,
    estimated_minutes INTEGER,
    budget_eur NUMERIC
);
CREATE TABLE appointments (
    id INTEGER PRIMARY KEY,
    starts_at DATETIME NOT NULL,
    ends_at DATETIME,
    title TEXT NOT NULL,
    location TEXT,
    reporter TEXT,
    notes TEXT
);
CREATE TABLE demo_info (made_on DATE NOT NULL);
CREATE INDEX topics_day ON topics (day);
CREATE INDEX appointments_starts_at ON appointments (starts_at);
"""

TOPIC_TITLES = [
    "Haushaltsdebatte im Landtag: Was die Kürzungen für Schulen bedeuten",
    "Öffentlicher Nahverkehr: Streik bei der Straßenbahn",
    "Klimaanpassung – Hitzeschutz in Altenheimen",
    "Fußball: Vorbericht zum Derby",
    "Kommunalval i Malmö: vad väljarna tycker",
    "Bostadsbristen i Göteborg – unga flyttar hem igen",
    "Sjukvårdens köer: så långa är väntetiderna",
    "Älgjakten börjar – säkerhet i skogen",
    "Weihnachtsmärkte: Sicherheit und Besucherzahlen",
    "Öresundsbron: pendlare om nya tågtider",
]
APPOINTMENT_TITLES = [
    ("Pressekonferenz des Bürgermeisters", "Rathaus, Großer Saal"),
    ("Interview mit der Schulleiterin", "Gesamtschule Süd"),
    ("Redaktionskonferenz", "Newsroom, 3. Stock"),
    ("Presseträff med kommunstyrelsen", "Stadshuset, Malmö"),
    ("Intervju med förbundsordföranden", "Folkets hus, Göteborg"),
    ("Fotografering på torget", "Stortorget, Malmö"),
    ("Gerichtstermin: Urteil im Bauprozess", "Landgericht, Saal 1.12"),
]
DESKS = ["Politik", "Lokales", "Sport", "Kultur", "Inrikes", "Ekonomi"]
STATUSES = ["geplant", "in Arbeit", "fertig", "planerad", "pågår"]
REPORTERS = ["Jürgen Weiß", "Åsa Lindström", "Björn Öberg", "Zoë Müller", "Märta Åkesson"]
FORMULA_TITLE = '=HYPERLINK("http://example.invalid/","Klick mich / Klicka här")'


def make_planning_database(path: Path, today: dt.date, *, seed: int = 2026) -> Path:
    """Write the demo planning database to *path* (replacing it), its rows spread from a
    week before *today* to three weeks after it. 0600 (it lives under the data dir)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    rng = random.Random(seed)  # noqa: S311 - demo content
    conn = sqlite3.connect(tmp)
    try:
        conn.executescript(SCHEMA)
        topics = []
        for offset in range(-7, 22):
            day = today + dt.timedelta(days=offset)
            for n in range(rng.randint(2, 4)):
                title = TOPIC_TITLES[(offset * 3 + n) % len(TOPIC_TITLES)]
                budget = Decimal(rng.randint(0, 400_00)) / 100 if n else None
                minutes = rng.choice([None, 30, 45, 60, 90, 120])
                topics.append((day.isoformat(), title, rng.choice(DESKS), rng.choice(STATUSES), minutes, budget))
        # Inside the window (day 2): a title that a spreadsheet would run as a formula.
        topics.append(((today + dt.timedelta(days=1)).isoformat(), FORMULA_TITLE, "Lokales", "geplant", 15, None))
        conn.executemany(
            "INSERT INTO topics (day, title, desk, status, estimated_minutes, budget_eur) VALUES (?, ?, ?, ?, ?, ?)",
            [(d, t, desk, s, m, str(b) if b is not None else None) for d, t, desk, s, m, b in topics],
        )
        appointments = []
        for offset in range(-7, 22):
            day = today + dt.timedelta(days=offset)
            for n in range(rng.randint(1, 3)):
                title, location = APPOINTMENT_TITLES[(offset + n) % len(APPOINTMENT_TITLES)]
                start = dt.datetime.combine(day, dt.time(rng.choice([8, 9, 10, 13, 14, 16]), rng.choice([0, 15, 30])))
                end = start + dt.timedelta(minutes=rng.choice([30, 60, 90]))
                note = rng.choice([None, "Fotograf buchen", "Tolk behövs?", "Live-Ticker ab 10 Uhr", "Bilder: Åsa"])
                appointments.append(
                    (
                        f"{start:%Y-%m-%d %H:%M:%S}",
                        f"{end:%Y-%m-%d %H:%M:%S}",
                        title,
                        location,
                        rng.choice(REPORTERS),
                        note,
                    )
                )
        # The window's edges: today 00:00 is in it, the day after its last day is not.
        first, after = (
            dt.datetime.combine(today, dt.time(0)),
            dt.datetime.combine(today + dt.timedelta(days=5), dt.time(0)),
        )
        appointments.append(
            (f"{first:%Y-%m-%d %H:%M:%S}", None, "Nachtdienst / Nattjour", "Newsroom", "Zoë Müller", None)
        )
        appointments.append((f"{after:%Y-%m-%d %H:%M:%S}", None, "Frühschicht (außerhalb)", "Newsroom", None, None))
        conn.executemany(
            "INSERT INTO appointments (starts_at, ends_at, title, location, reporter, notes) VALUES (?, ?, ?, ?, ?, ?)",
            appointments,
        )
        conn.execute("INSERT INTO demo_info (made_on) VALUES (?)", [today.isoformat()])
        conn.commit()
    finally:
        conn.close()
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
    return path


def made_on(path: Path) -> dt.date | None:
    """The day the demo database at *path* was made (None: missing or not ours)."""
    try:
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        (value,) = conn.execute("SELECT made_on FROM demo_info").fetchone()
        return dt.date.fromisoformat(value)
    except (sqlite3.Error, TypeError, ValueError):
        return None
    finally:
        conn.close()


TOPICS_SQL = """SELECT day AS "Tag / Dag",
       title AS "Thema / Ämne",
       desk AS "Ressort / Redaktion",
       status AS "Status",
       estimated_minutes AS "Minuten / Minuter",
       budget_eur AS "Budget (EUR)"
FROM topics
WHERE day >= date(%(start)s) AND day < date(%(end)s)
ORDER BY day, id"""

APPOINTMENTS_SQL = """SELECT starts_at AS "Beginn / Start",
       ends_at AS "Ende / Slut",
       title AS "Termin / Möte",
       location AS "Ort / Plats",
       reporter AS "Reporter",
       notes AS "Notiz / Anteckning"
FROM appointments
WHERE starts_at >= %(start)s AND starts_at < %(end)s
ORDER BY starts_at, id"""

DATASETS = [
    {"file_name": "topics.xlsx", "sheet_title": "Themen – Ämnen", "sql": TOPICS_SQL},
    {"file_name": "appointments.xlsx", "sheet_title": "Termine – Möten", "sql": APPOINTMENTS_SQL},
]
