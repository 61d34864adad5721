"""Planning exports to a real FTP server (pyftpdlib, FTPS) and a real SFTP server
(OpenSSH ``sshd``), both started by the tests: the second night replaces the files and
leaves no temporary file behind; a connection cut mid-upload (RELIABILITY 5) fails the
run within the timeout and leaves the previous night's file intact; a worker killed
mid-upload (RELIABILITY 1) leaves the previous file under the final name, and the next
run cleans up after it; a *Cancel* mid-upload leaves the previous file and no temporary
file."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.utils import timezone

from backupsite import configwrite
from destinations.models import Destination
from jobs.exports import service
from jobs.models import ExportDataset, ExportRun, PlanningExport, Source
from tests.export_helpers import read_sheet
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.kinds.ftp", "tests.kinds.sftp"]

FOLDER = "planning/newsroom"  # a sub-folder the administrator typed; made if missing
REPO = Path(__file__).resolve().parent.parent
BIG_ROWS = 40_000  # ~4 MB of barely compressible text: long enough an upload to cut


def planning_db(path: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    today = timezone.localdate()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS topics (id INTEGER PRIMARY KEY, day DATE, title TEXT, filler TEXT)")
    conn.execute("DELETE FROM topics")
    conn.executemany(
        "INSERT INTO topics (day, title, filler) VALUES (?, ?, ?)",
        [
            (
                (today + dt.timedelta(days=n % 5)).isoformat(),
                f"Thema {n} – Ämne {seed}",
                rng.randbytes(48).hex(),
            )
            for n in range(rows)
        ],
    )
    conn.commit()
    conn.close()
    return path


SQL = "SELECT id, day, title, filler FROM topics WHERE day >= date(%(start)s) AND day < date(%(end)s) ORDER BY id"


@pytest.fixture(params=["ftps", "sftp"])
def remote(request, db, tmp_path):
    """An export of one big and one small file to the kind under test, and raw access
    to what the server stores."""
    kind = request.getfixturevalue("ftps_kind" if request.param == "ftps" else "sftp_kind")
    database = planning_db(tmp_path / "planning.sqlite3", 500, seed=1)
    source = Source.objects.create(name="Planning", kind="sqlite", settings={"path": str(database)})
    destination = kind.destination(name=f"Customer {request.param}")
    destination.save()
    export = PlanningExport(name="Nightly", source=source, folder=FOLDER)
    configwrite.save(export, m2m={"destinations": [destination]})
    ExportDataset.objects.create(export=export, position=0, file_name="topics.xlsx", sheet_title="Themen", sql=SQL)
    ExportDataset.objects.create(
        export=export, position=1, file_name="count.xlsx", sheet_title="Anzahl", sql="SELECT count(*) AS n FROM topics"
    )
    return {
        "kind": kind,
        "server": request.getfixturevalue("ftp_server") if request.param == "ftps" else None,
        "name": request.param,
        "export": export,
        "destination": destination,
        "database": database,
        "tmp": tmp_path,
    }


def night(export) -> ExportRun:
    return service.execute(service.create_run(export).pk)


def stored(remote, name: str) -> bytes:
    return remote["kind"].raw_read(FOLDER, name)


def test_the_second_night_replaces_the_files_and_leaves_no_temporary_file(remote):
    first = night(remote["export"])
    assert first.state == ExportRun.State.SUCCEEDED, first.error
    assert remote["kind"].raw_names(FOLDER) == ["count.xlsx", "topics.xlsx"]
    before = stored(remote, "topics.xlsx")
    planning_db(remote["database"], 120, seed=2)  # the next day's planning
    second = night(remote["export"])
    assert second.state == ExportRun.State.SUCCEEDED, second.error
    assert remote["kind"].raw_names(FOLDER) == ["count.xlsx", "topics.xlsx"]  # nothing hidden left over
    after = stored(remote, "topics.xlsx")
    assert after != before
    local = remote["tmp"] / "back.xlsx"
    local.write_bytes(after)
    _, header, rows = read_sheet(local)
    assert header == ["id", "day", "title", "filler"] and len(rows) == 120
    assert rows[0][2] == "Thema 0 – Ämne 2"
    upload = second.uploads.get()
    assert upload.state == "succeeded" and FOLDER in upload.remote_folder


class CuttingProxy(TcpProxy):
    """Forwards until *limit* bytes went up through any of the *group*, then cuts every
    connection of the group at once (a network dropped mid-upload)."""

    def __init__(self, target, group: list, limit: int, **kwargs) -> None:
        self.group = group
        self.limit = limit
        self.cut_at: list[int] = []
        group.append(self)
        super().__init__(target, **kwargs)

    def _pump(self, src, dst, up):
        src.settimeout(None)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.bytes_up += len(data)
                if up and sum(p.bytes_up for p in self.group) > self.limit and not self.cut_at:
                    self.cut_at.append(self.bytes_up)
                    for proxy in self.group:
                        proxy.cut()
                    return
        except OSError:
            pass


def _through_proxies(remote, group: list, limit: int) -> Destination:
    """The destination, reached through cutting proxies: for SFTP one in front of the
    server; for FTP one in front of the control port and one per passive port (the
    legacy listener's fixed ports, on 127.0.0.2 where the client connects back)."""
    kind = remote["kind"]
    settings = dict(kind.settings)
    if remote["name"] == "sftp":
        proxy = CuttingProxy(("127.0.0.1", settings["port"]), group, limit)
        settings["port"] = proxy.port
    else:
        server = remote["server"]
        control = CuttingProxy(("127.0.0.1", server.ports["legacy"]), group, limit, host="127.0.0.2")
        for port in server.legacy_passive_ports:
            CuttingProxy(("127.0.0.1", port), group, limit, host="127.0.0.2", port=port)
        settings.update(server.settings("legacy"), host="127.0.0.2", port=control.port)
    destination = remote["destination"]
    destination.settings = settings
    destination.save()
    return destination


@pytest.mark.slow
def test_a_connection_cut_mid_upload_leaves_the_previous_nights_file(remote, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 5
    planning_db(remote["database"], BIG_ROWS, seed=3)
    assert night(remote["export"]).state == ExportRun.State.SUCCEEDED
    previous = stored(remote, "topics.xlsx")
    assert len(previous) > 2_000_000
    original = dict(remote["destination"].settings)
    planning_db(remote["database"], BIG_ROWS, seed=4)
    group: list[CuttingProxy] = []
    _through_proxies(remote, group, limit=len(previous) // 3)
    try:
        started = time.monotonic()
        run = night(remote["export"])
        elapsed = time.monotonic() - started
    finally:
        for proxy in group:
            proxy.close()
    assert any(p.cut_at for p in group), "the upload was never cut"
    assert run.state == ExportRun.State.FAILED
    assert "Every upload failed; last night's files stay" in run.error
    upload = run.uploads.get()
    assert upload.state == "failed" and upload.error
    assert elapsed < 60
    assert stored(remote, "topics.xlsx") == previous  # intact, byte for byte
    # The next night, with the network back, replaces it and cleans up the partial.
    planning_db(remote["database"], 200, seed=5)
    remote["destination"].settings = original
    remote["destination"].save()
    assert night(remote["export"]).state == ExportRun.State.SUCCEEDED
    assert remote["kind"].raw_names(FOLDER) == ["count.xlsx", "topics.xlsx"]
    assert stored(remote, "topics.xlsx") != previous


KILLED_UPLOADER = """
import json, os, sys, time
from pathlib import Path
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
sys.path.insert(0, {repo!r})
import django
django.setup()
from django.conf import settings
settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
from destinations.backends import get_kind
from destinations.backends.base import UploadItem
spec = json.loads(sys.stdin.read())
backend = get_kind(spec["kind"]).from_settings(spec["settings"], spec["secrets"])
items = [UploadItem(Path(spec["path"]), spec["name"], spec["size"])]
with backend.session() as session:
    # What the export's upload does (jobs.exports.service._upload), slowed down enough
    # to be killed in the middle.
    session.upload_files(spec["folder"], items, replace=True, progress=lambda done: time.sleep(0.002))
"""


@pytest.mark.slow
def test_a_worker_killed_mid_upload_leaves_the_previous_file_and_the_next_night_cleans_up(remote):
    """RELIABILITY 1 for the export's uploads: SIGKILL mid-upload. The reaper part (the
    run marked interrupted) is tests/test_exports.py's stale-heartbeat test."""
    assert night(remote["export"]).state == ExportRun.State.SUCCEEDED
    previous = stored(remote, "topics.xlsx")
    new = remote["tmp"] / "new-topics.xlsx"
    new.write_bytes(os.urandom(24 * 1024 * 1024))
    kind = remote["kind"]
    spec = {
        "kind": kind.kind,
        "settings": kind.settings,
        "secrets": kind.secrets,
        "path": str(new),
        "name": "topics.xlsx",
        "size": new.stat().st_size,
        "folder": FOLDER,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_UPLOADER.format(repo=str(REPO))], stdin=subprocess.PIPE, cwd=REPO
    )
    child.stdin.write(json.dumps(spec).encode())
    child.stdin.close()
    partial = ".topics.xlsx.partial"
    deadline = time.monotonic() + 60
    try:
        while partial not in kind.raw_names(FOLDER) or len(kind.raw_read(FOLDER, partial)) < 256 * 1024:
            assert child.poll() is None, "the uploader ended before it could be killed"
            assert time.monotonic() < deadline, "the upload did not start"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(0.3)
    assert stored(remote, "topics.xlsx") == previous  # the final name still holds last night's file
    assert partial in kind.raw_names(FOLDER)
    assert night(remote["export"]).state == ExportRun.State.SUCCEEDED
    assert kind.raw_names(FOLDER) == ["count.xlsx", "topics.xlsx"]  # the partial went with the next upload


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the heartbeat thread must see the cancel flag
def test_a_cancel_mid_upload_leaves_the_previous_nights_file_and_no_temporary_file(remote, monkeypatch):
    """*Cancel* while the big file goes up (the destination contract's ``cancel``
    callback, polled between chunks): the old file stays byte for byte, the temporary
    one is removed, the run is cancelled."""
    from jobs.services import CancelOutcome

    monkeypatch.setattr(service.Heartbeat, "CANCEL_POLL", 0.05)
    planning_db(remote["database"], BIG_ROWS, seed=6)
    assert night(remote["export"]).state == ExportRun.State.SUCCEEDED
    previous = stored(remote, "topics.xlsx")
    planning_db(remote["database"], BIG_ROWS, seed=7)
    asked = []

    def cancel_when_uploading(current: ExportRun) -> None:
        if current.phase == ExportRun.Phase.UPLOAD and not asked:
            asked.append(service.cancel_run(current.pk))
            time.sleep(0.5)  # the heartbeat thread sees the flag (ten polls) before the first chunk goes

    run = service.execute(service.create_run(remote["export"]).pk, listener=cancel_when_uploading)
    assert asked == [CancelOutcome.REQUESTED]
    assert run.state == ExportRun.State.CANCELLED, run.error
    assert run.uploads.get().state == "failed"
    assert stored(remote, "topics.xlsx") == previous  # intact, byte for byte
    assert remote["kind"].raw_names(FOLDER) == ["count.xlsx", "topics.xlsx"]  # no temporary file left
    assert not service.staging_dir(run.pk).exists()
