"""Retention: only this job's finished backups are ever deleted, never the newest one.

``plan()`` is tested on plain listings (no I/O); ``apply()`` against the real
LocalBackend in a per-test folder, and once end to end after real runs.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from destinations.backends.base import DestinationError, PermanentError, RemoteFile
from destinations.backends.local import LocalBackend, LocalConf, staging_copies
from jobs import retention, services
from jobs.models import Run
from jobs.retention import apply, archive_pattern, plan

NOW = datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC)
TEMPLATE = "{job}-{date}-{time}"
M = ".manifest.json"


def stamp(days_ago: float) -> float:
    return (NOW - timedelta(days=days_ago)).timestamp()


def archive_name(slug: str, days_ago: float, suffix: str = ".tar.zst") -> str:
    when = NOW - timedelta(days=days_ago)
    return f"{slug}-{when:%Y-%m-%d}-{when:%H%M%S}{suffix}"


def backup(name: str, days_ago: float | None) -> list[RemoteFile]:
    """An archive and its manifest, as a backend lists them."""
    modified = None if days_ago is None else stamp(days_ago)
    return [RemoteFile(name, 1000, modified), RemoteFile(name + M, 100, modified)]


def backups(slug: str, *days: float, suffix: str = ".tar.zst") -> tuple[list[RemoteFile], list[str]]:
    files, names = [], []
    for d in days:
        name = archive_name(slug, d, suffix)
        files += backup(name, d)
        names.append(name)
    return files, names


def make_plan(files, *, template=TEMPLATE, slug="office", keep_last=None, max_age_days=None, protect=(), **kw):
    return plan(
        files,
        template=template,
        job_slug=slug,
        keep_last=keep_last,
        max_age_days=max_age_days,
        now=NOW,
        protect=set(protect),
        **kw,
    )


# --- plan(): the rules ------------------------------------------------------------------
def test_keep_last_keeps_the_n_newest_and_deletes_the_rest_oldest_first():
    files, names = backups("office", 0, 1, 2, 3, 4)
    result = make_plan(files, keep_last=3)
    assert result.keep == names[:3]
    assert result.delete == [names[4], names[3]]
    assert result.files_to_delete == [names[4], names[4] + M, names[3], names[3] + M]
    assert "beyond the newest 3" in result.reasons[names[3]]
    assert "among the newest 3" in result.reasons[names[1]]


def test_max_age_deletes_what_is_older_than_the_limit():
    files, names = backups("office", 0, 1, 2, 2.01, 10)
    result = make_plan(files, max_age_days=2)
    assert result.keep == names[:3]  # exactly 2 days old is not older than 2 days
    assert result.delete == [names[4], names[3]]
    assert result.reasons[names[4]] == "deleted: older than 2 days"


def test_both_rules_delete_when_either_says_so():
    files, names = backups("office", 0, 1, 2, 3, 4)
    # At most 3, and nothing older than 1 day: the count rule alone would keep day 2.
    result = make_plan(files, keep_last=3, max_age_days=1)
    assert result.keep == names[:2]
    assert result.delete == [names[4], names[3], names[2]]
    assert result.reasons[names[4]] == "deleted: beyond the newest 3 and older than 1 day"
    assert result.reasons[names[2]] == "deleted: older than 1 day"
    # At most 2, and nothing older than 30 days: now the count rule decides.
    result = make_plan(files, keep_last=2, max_age_days=30)
    assert result.keep == names[:2]
    assert result.reasons[names[1]] == "kept: among the newest 2 and not older than 30 days"


def test_no_rule_deletes_nothing():
    files, names = backups("office", 0, 100, 1000)
    result = make_plan(files)
    assert result.delete == [] and result.orphans == []
    assert result.keep == names
    assert result.reasons[names[2]] == "kept: no retention configured"


def test_the_newest_backup_is_kept_even_when_older_than_max_age():
    files, names = backups("office", 40, 50, 60)
    result = make_plan(files, max_age_days=7)
    assert result.keep == [names[0]]
    assert result.reasons[names[0]] == "kept: the newest backup is always kept"
    assert result.delete == [names[2], names[1]]


def test_keep_last_zero_still_keeps_the_newest():
    files, names = backups("office", 0, 1, 2)
    result = make_plan(files, keep_last=0)
    assert result.keep == [names[0]] and result.delete == [names[2], names[1]]


def test_protected_names_are_kept_whatever_the_rules_say():
    files, names = backups("office", 0, 1, 2, 3)
    result = make_plan(files, keep_last=1, protect={names[2], names[3] + M})
    assert result.keep == [names[0], names[2], names[3]]
    assert result.delete == [names[1]]
    assert result.reasons[names[2]] == "kept: protected (written by this run)"


def test_newest_is_decided_by_modification_time_then_by_name():
    files = backup("office-2026-03-01-000000.tar.zst", 5) + backup("office-2026-03-02-000000.tar.zst", 5)
    files += backup("office-2026-01-01-000000.tar.zst", 1)  # oldest name, newest file
    result = make_plan(files, keep_last=2)
    assert result.keep == ["office-2026-01-01-000000.tar.zst", "office-2026-03-02-000000.tar.zst"]
    assert result.delete == ["office-2026-03-01-000000.tar.zst"]


def test_negative_settings_naive_now_and_bad_templates_are_refused():
    with pytest.raises(ValueError, match="negative"):
        make_plan([], keep_last=-1)
    with pytest.raises(ValueError, match="negative"):
        make_plan([], max_age_days=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        plan([], template=TEMPLATE, job_slug="office", keep_last=1, max_age_days=None, now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="placeholder"):
        make_plan([], template="{job}-{host}", keep_last=1)
    with pytest.raises(ValueError, match="slug"):
        make_plan([], slug="", keep_last=1)


# --- plan(): what is never touched -------------------------------------------------------
def test_foreign_files_in_the_same_folder_are_never_touched():
    files, names = backups("office", 0, 5, 6)
    foreign = [
        RemoteFile("notes.txt", 1, stamp(900)),
        RemoteFile("office-2020-01-01-000000.tar.zst.bak", 1, stamp(900)),
        RemoteFile("office-2020-01-01-000000.tar.gz", 1, stamp(900)),
        RemoteFile("Office-2020-01-01-000000.tar.zst", 1, stamp(900)),  # case matters
        RemoteFile("office-2020-01-01-0000.tar.zst", 1, stamp(900)),  # time too short
        RemoteFile("office-2020-01-01-000000-copy.tar.zst", 1, stamp(900)),
        RemoteFile("old-office-2020-01-01-000000.tar.zst", 1, stamp(900)),  # anchored at the start
    ]
    # Each foreign archive even has a "manifest": the name still is not this job's.
    foreign += [RemoteFile(f.name + M, 1, stamp(900)) for f in foreign if ".tar." in f.name]
    result = make_plan(files + foreign, keep_last=1, max_age_days=1)
    assert result.delete == [names[2], names[1]]
    assert set(result.ignored) == {f.name for f in foreign}
    assert result.reasons["notes.txt"] == "never touched: does not match this job's naming pattern"
    assert "never touched" in result.reasons["old-office-2020-01-01-000000.tar.zst" + M]
    assert not set(result.files_to_delete) & {f.name for f in foreign}


def test_another_jobs_archives_with_a_prefix_sharing_slug_are_never_touched():
    ours, our_names = backups("office", 0, 10, 20)
    theirs, their_names = backups("office-2", 1, 11, 21)
    theirs_too, _ = backups("office2", 2, 12)
    listing = ours + theirs + theirs_too
    result = make_plan(listing, slug="office", keep_last=1)
    assert result.delete == [our_names[2], our_names[1]]
    assert set(result.files_to_delete) == {n + s for n in our_names[1:] for s in ("", M)}
    # And the other way round: "office-2" does not take "office"'s backups.
    result = make_plan(listing, slug="office-2", keep_last=1)
    assert result.delete == [their_names[2], their_names[1]]
    # With a run-number template too: "office-2-5" is not run "2-5" of "office".
    run_files = backup("office-7.tar.zst", 3) + backup("office-2-5.tar.zst", 30) + backup("office-9.tar.zst", 1)
    result = make_plan(run_files, template="{job}-{run}", keep_last=1)
    assert result.delete == ["office-7.tar.zst"]
    assert "office-2-5.tar.zst" in result.ignored


def test_an_archive_without_manifest_is_never_touched():
    files, names = backups("office", 0, 1)
    lonely = archive_name("office", 400)
    result = make_plan([*files, RemoteFile(lonely, 5, stamp(400))], keep_last=1, max_age_days=1)
    assert lonely not in result.delete and lonely in result.ignored
    assert result.reasons[lonely] == "never touched: no manifest: unfinished, or not written by backupsite"
    assert result.delete == [names[1]]


def test_partial_and_hidden_files_are_never_touched():
    files, _ = backups("office", 0, 1)
    name = archive_name("office", 300)
    hidden = [
        RemoteFile(f".{name}.partial", 5, stamp(300)),
        RemoteFile(f".{name}{M}.partial", 5, stamp(300)),
        RemoteFile(".members-abc123", 5, stamp(300)),
        RemoteFile(f".{name}", 5, stamp(300)),
        RemoteFile(f".{name}{M}", 5, stamp(300)),
    ]
    result = make_plan(files + hidden, keep_last=1)
    assert set(result.ignored) == {f.name for f in hidden}
    assert all(result.reasons[f.name] == "never touched: hidden or temporary file" for f in hidden)
    assert not set(result.files_to_delete) & {f.name for f in hidden}


def test_the_key_file_is_never_touched():
    files, names = backups("office", 0, 1, suffix=".tar.zst.age")
    own = "backupsite-key-0123456789ab.age"  # a key's own file (jobs.engine.agekeys.key_file_name)
    key = [
        RemoteFile("backupsite-key.age", 400, stamp(900)),
        RemoteFile("backupsite-key.age" + M, 1, stamp(900)),
        RemoteFile(own, 400, stamp(900)),
    ]
    for template in (TEMPLATE, "backupsite-key", "{job}"):
        result = make_plan(files + key, template=template, slug="office", keep_last=1, max_age_days=0)
        assert {"backupsite-key.age", own} <= set(result.ignored)
        assert not {"backupsite-key.age", own} & set(result.files_to_delete)
    result = make_plan(files + key, keep_last=1)
    assert result.reasons["backupsite-key.age"] == "never touched: an encryption key of the job's backups"
    assert result.reasons[own] == "never touched: an encryption key of the job's backups"
    assert result.delete == [names[1]]


def test_weekday_template():
    week = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
    files = []
    for age, day in enumerate(week):
        files += backup(f"office-{day}.tar.zst", age)
    files += backup("office-funday.tar.zst", 50) + backup("office-Monday.tar.zst", 50)
    result = make_plan(files, template="{job}-{weekday}", keep_last=3)
    assert result.keep == ["office-monday.tar.zst", "office-tuesday.tar.zst", "office-wednesday.tar.zst"]
    assert result.delete == [f"office-{d}.tar.zst" for d in reversed(week[3:])]
    assert {"office-funday.tar.zst", "office-Monday.tar.zst"} <= set(result.ignored)


def test_encrypted_archives_are_handled_like_plain_ones():
    enc, enc_names = backups("office", 0, 2, 4, suffix=".tar.zst.age")
    plain, plain_names = backups("office", 1, 3)
    # An encrypted archive whose manifest is named after the plain archive has no manifest.
    odd = archive_name("office", 100, ".tar.zst.age")
    odd_files = [RemoteFile(odd, 1, stamp(100)), RemoteFile(odd.removesuffix(".age") + M, 1, stamp(100))]
    result = make_plan(enc + plain + odd_files, keep_last=2)
    assert result.keep == [enc_names[0], plain_names[0]]
    assert result.delete == [enc_names[2], plain_names[1], enc_names[1]]
    assert enc_names[2] + M in result.files_to_delete
    assert odd in result.ignored and odd.removesuffix(".age") + M in result.ignored
    # Only the two suffixes count, nothing after them.
    other = backup(archive_name("office", 10, ".tar.zst.age.old"), 10) + backup(archive_name("office", 11, ".zst"), 11)
    assert make_plan(other + enc, keep_last=1).delete == [enc_names[2], enc_names[1]]


# --- plan(): dating ---------------------------------------------------------------------
def test_without_modification_time_the_date_in_the_name_is_used():
    names = [archive_name("office", d) for d in (0, 3, 9)]
    files = [f for n in names for f in backup(n, None)]
    result = make_plan(files, max_age_days=5)
    assert result.delete == [names[2]]
    assert result.keep == names[:2]


def test_name_dates_are_read_in_the_time_zone_names_are_rendered_in():
    # 2026-03-14 10:00 in New York is 14:00 UTC: 22 hours old, not 26.
    files = backup("office-2026-03-15-110000.tar.zst", None) + backup("office-2026-03-14-100000.tar.zst", None)
    assert make_plan(files, max_age_days=1, name_tz=ZoneInfo("America/New_York")).delete == []
    assert make_plan(files, max_age_days=1).delete == ["office-2026-03-14-100000.tar.zst"]


def test_a_date_without_time_counts_as_the_end_of_that_day():
    files = backup("office-2026-03-13.tar.zst", None) + backup("office-2026-03-12.tar.zst", None)
    files += backup("office-2026-03-15.tar.zst", None)
    # 2026-03-13 ends at 2026-03-14 00:00, 1.5 days before NOW: not older than 2 days.
    result = make_plan(files, template="{job}-{date}", max_age_days=2)
    assert result.delete == ["office-2026-03-12.tar.zst"]


def test_what_cannot_be_dated_is_kept_and_does_not_use_up_a_place():
    files = backup("office-1.tar.zst", None) + backup("office-2.tar.zst", 10) + backup("office-3.tar.zst", 5)
    files += backup("office-4.tar.zst", 1)
    result = make_plan(files, template="{job}-{run}", keep_last=2)
    assert result.delete == ["office-2.tar.zst"]
    assert result.keep == ["office-4.tar.zst", "office-3.tar.zst", "office-1.tar.zst"]
    assert "cannot be dated" in result.reasons["office-1.tar.zst"]
    # An impossible date in the name cannot date it either.
    bad = backup("office-2026-13-45-120000.tar.zst", None) + backup(archive_name("office", 0), 0)
    assert make_plan(bad, keep_last=1).delete == []


# --- plan(): orphan manifests -------------------------------------------------------------
def test_orphan_manifests_are_removed_only_behind_a_newer_complete_backup():
    files, _ = backups("office", 0, 1)
    old_orphan = RemoteFile(archive_name("office", 30) + M, 10, stamp(30))
    new_orphan = RemoteFile(archive_name("office", -0.001) + M, 10, stamp(-0.001))  # newer than any archive
    foreign_orphan = RemoteFile("other-2020-01-01-000000.tar.zst" + M, 10, stamp(300))
    listing = [*files, old_orphan, new_orphan, foreign_orphan]
    result = make_plan(listing, keep_last=5)
    assert result.orphans == [old_orphan.name]
    assert result.files_to_delete == [old_orphan.name]
    assert new_orphan.name in result.ignored and foreign_orphan.name in result.ignored
    assert "no newer complete backup" in result.reasons[new_orphan.name]
    # Not without a retention rule, not when protected, not without any complete backup.
    assert make_plan(listing).orphans == []
    assert make_plan(listing, keep_last=5, protect={old_orphan.name.removesuffix(M)}).orphans == []
    assert make_plan([old_orphan], keep_last=5).orphans == []


# --- the pattern --------------------------------------------------------------------------
def test_the_pattern_escapes_literals_and_repeats_placeholders():
    pattern = archive_pattern("{job}.{date}_v+{run}", "a.b")
    assert pattern.fullmatch("a.b.2026-01-02_v+7.tar.zst")
    assert pattern.fullmatch("a.b.2026-01-02_v+7.tar.zst.age")
    assert not pattern.fullmatch("aXb.2026-01-02_v+7.tar.zst")
    assert not pattern.fullmatch("a.bX2026-01-02_v+7.tar.zst")
    assert not pattern.fullmatch("a.b.2026-01-02_vv7.tar.zst")
    assert not pattern.search("old-a.b.2026-01-02_v+7.tar.zst") and not pattern.search("a.b.2026-01-02_v+7.tar.zst.x")
    twice = archive_pattern("{date}-{job}-{date}", "x")
    assert twice.fullmatch("2026-01-02-x-2026-01-02.tar.zst")
    assert not twice.fullmatch("2026-01-02-x-2026-01-03.tar.zst")


# --- apply() against the real LocalBackend ----------------------------------------------------
@pytest.fixture
def local(folders):
    """An open session of a real local destination, and its job folder."""
    folder = folders["backups"] / "backupsite" / "office"
    folder.mkdir(parents=True)
    with LocalBackend(LocalConf(path=str(folders["backups"]))).session() as session:
        yield session, folder


def write(folder, name: str, days_ago: float) -> None:
    path = folder / name
    path.write_bytes(b"x" * 10)
    os.utime(path, (stamp(days_ago), stamp(days_ago)))


def write_backup(folder, slug: str, days_ago: float, suffix: str = ".tar.zst") -> str:
    name = archive_name(slug, days_ago, suffix)
    write(folder, name, days_ago)
    write(folder, name + M, days_ago)
    return name


def snapshot(**job) -> dict:
    config = {"slug": "office", "archive_name_template": TEMPLATE, "keep_last": None, "max_age_days": None}
    return {"job": config | job, "sources": [], "destinations": []}


def test_apply_deletes_old_backups_and_leaves_everything_else(local):
    backend, folder = local
    ours = [write_backup(folder, "office", d) for d in (0, 1, 2, 3)]
    enc = write_backup(folder, "office", 5, ".tar.zst.age")
    theirs = write_backup(folder, "office-2", 50)
    write(folder, "backupsite-key.age", 500)
    write(folder, "README.txt", 500)
    write(folder, archive_name("office", 60), 60)  # no manifest
    write(folder, f".{archive_name('office', 70)}.partial", 70)
    before = {p.name for p in folder.iterdir()}

    result = apply(backend, snapshot(keep_last=2), now=NOW, protect={ours[0]})

    assert result.errors == []
    gone = {ours[2], ours[2] + M, ours[3], ours[3] + M, enc, enc + M}
    assert sorted(result.deleted) == sorted(gone)
    assert result.kept == [ours[0], ours[1]]
    assert {p.name for p in folder.iterdir()} == before - gone
    assert (folder / theirs).exists() and (folder / "backupsite-key.age").exists()
    assert result.log_lines("Local disk")[0] == "Retention at Local disk: deleted 3 old backup(s), kept 2."


def test_apply_accepts_the_job_part_of_the_snapshot_too(local):
    backend, folder = local
    names = [write_backup(folder, "office", d) for d in (0, 10)]
    result = apply(backend, snapshot(max_age_days=3)["job"], now=NOW)
    assert result.deleted == [names[1], names[1] + M]


def test_apply_deletes_the_archive_first_and_its_manifest_second(local, monkeypatch):
    backend, folder = local
    names = [write_backup(folder, "office", d) for d in (0, 1, 2, 3)]
    calls = []
    original = backend.delete

    def recording_delete(where, name):
        # The manifest must still be there when its archive goes.
        calls.append((name, (folder / name).exists(), (folder / (name + M)).exists()))
        original(where, name)

    monkeypatch.setattr(backend, "delete", recording_delete)
    apply(backend, snapshot(keep_last=1), now=NOW)
    assert [c[0] for c in calls] == [names[3], names[3] + M, names[2], names[2] + M, names[1], names[1] + M]
    for name, existed, manifest_existed in calls:
        assert existed
        if not name.endswith(M):
            assert manifest_existed


def test_a_failed_delete_is_reported_and_does_not_stop_the_others(local, monkeypatch):
    backend, folder = local
    names = [write_backup(folder, "office", d) for d in (0, 1, 2, 3)]
    original = backend.delete

    def flaky_delete(where, name):
        if name == names[2]:
            raise PermanentError(f"Permission denied while deleting {name}.")
        original(where, name)

    monkeypatch.setattr(backend, "delete", flaky_delete)
    result = apply(backend, snapshot(keep_last=1), now=NOW)
    assert result.errors == [f"Could not delete {names[2]}: Permission denied while deleting {names[2]}."]
    assert not result.ok
    # The undeletable archive keeps its manifest (it still is a complete backup).
    assert (folder / names[2]).exists() and (folder / (names[2] + M)).exists()
    assert names[2] in result.kept
    assert not (folder / names[1]).exists() and not (folder / names[3]).exists()
    assert sorted(result.deleted) == sorted([names[1], names[1] + M, names[3], names[3] + M])
    assert result.log_lines("USB")[-1].startswith(f"Retention at USB: Could not delete {names[2]}")


def test_a_crash_between_archive_and_manifest_leaves_an_orphan_that_the_next_pass_removes(local, monkeypatch):
    backend, folder = local
    names = [write_backup(folder, "office", d) for d in (0, 1)]
    original = backend.delete

    def manifest_fails(where, name):
        if name.endswith(M):
            raise DestinationError("Connection lost while deleting.")
        original(where, name)

    monkeypatch.setattr(backend, "delete", manifest_fails)
    result = apply(backend, snapshot(keep_last=1), now=NOW)
    assert result.deleted == [names[1]] and len(result.errors) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([names[0], names[0] + M, names[1] + M])
    monkeypatch.setattr(backend, "delete", original)
    result = apply(backend, snapshot(keep_last=1), now=NOW)
    assert result.deleted == [names[1] + M] and result.errors == []
    assert sorted(p.name for p in folder.iterdir()) == [names[0], names[0] + M]


def test_a_missing_folder_is_not_an_error(folders):
    with LocalBackend(LocalConf(path=str(folders["backups"]))).session() as session:
        result = apply(session, snapshot(keep_last=1), now=NOW)
    assert result.errors == [] and result.deleted == [] and result.kept == []


def test_a_failing_listing_is_reported_not_raised(local, monkeypatch):
    backend, folder = local
    write_backup(folder, "office", 10)

    def broken_list(where):
        raise DestinationError("The server refused the connection.")

    monkeypatch.setattr(backend, "list", broken_list)
    result = apply(backend, snapshot(keep_last=1), now=NOW)
    assert result.errors == ["Could not list the backups: The server refused the connection."]


def test_without_a_rule_the_folder_is_not_even_listed(local, monkeypatch):
    backend, folder = local
    write_backup(folder, "office", 10)
    monkeypatch.setattr(backend, "list", lambda where: pytest.fail("listed"))
    result = apply(backend, snapshot(), now=NOW)
    assert result == retention.Result()
    assert result.log_lines("x") == []


def test_an_invalid_template_deletes_nothing_and_says_so(local):
    backend, folder = local
    for d in (0, 1, 2):
        write_backup(folder, "office", d)
    result = apply(backend, snapshot(keep_last=1, archive_name_template="{job}-{nope}"), now=NOW)
    assert result.deleted == [] and "Retention skipped" in result.errors[0]
    assert len(list(folder.iterdir())) == 6


def test_local_copies_folder(folders):
    folder = folders["archives"] / "office"
    folder.mkdir(parents=True)
    names = [write_backup(folder, "office", d) for d in (0, 1, 2)]
    write(folder, ".members-abc", 50)
    write(folder, f".{archive_name('office', 50)}.partial", 50)
    target = write_backup(folders["root"], "office", 40)
    os.symlink(folders["root"] / target, folder / archive_name("office", 40))
    os.symlink(folders["root"] / (target + M), folder / (archive_name("office", 40) + M))
    (folder / (archive_name("office", 45) + ".tar.zst")).mkdir()  # not a file

    result = retention.apply_local(snapshot(keep_last=1), now=NOW)
    assert result.errors == []
    assert sorted(result.deleted) == sorted(n + s for n in names[1:] for s in ("", M))
    assert (folders["root"] / target).exists() and (folder / archive_name("office", 40)).is_symlink()
    assert (folder / ".members-abc").exists()
    assert retention.apply_local(snapshot(keep_last=1), now=NOW, root=folders["root"] / "nowhere").errors == []


def test_local_copies_refuse_odd_names(folders):
    for slug in ("", ".", "..", "a/b", "../etc", "Office"):
        result = retention.apply_local({"job": {**snapshot(keep_last=1)["job"], "slug": slug}}, now=NOW)
        assert len(result.errors) == 1 and "job folder name" in result.errors[0]
    with staging_copies().session() as copies:
        for folder in (".", "..", "a//b", "../x", ".hidden"):
            with pytest.raises(DestinationError):
                copies.list(folder)
        for name in ("", ".hidden", "../x", "a/b", "..", "x\0"):
            with pytest.raises(DestinationError):
                copies.delete("office", name)


def test_apply_to_a_destination_that_is_gone(db):
    result = retention.apply_to_destination(99999, snapshot(keep_last=1), now=NOW)
    assert result.errors == ["The destination was deleted."]


def test_apply_to_destination_by_id(job, folders):
    destination = job.destinations.get()
    folder = folders["backups"] / "backupsite" / "office"
    folder.mkdir(parents=True)
    names = [write_backup(folder, "office", d) for d in (0, 1)]
    result = retention.apply_to_destination(destination.pk, snapshot(keep_last=1), now=NOW)
    assert result.deleted == [names[1], names[1] + M]


# --- end to end ----------------------------------------------------------------------------
def test_three_runs_with_keep_last_two_leave_the_two_newest_everywhere(job, folders):
    from django.utils import timezone

    job.keep_last = 2
    job.save()
    destination = job.destinations.get()
    remote = folders["backups"] / "backupsite" / job.slug
    remote.mkdir(parents=True)
    (remote / "backupsite-key.age").write_bytes(b"key")
    (remote / "notes.txt").write_text("mine")
    foreign = "office-backup-2-2020-01-01-000000.tar.zst"  # another job's, with a prefix-sharing slug
    (remote / foreign).write_bytes(b"x")
    (remote / (foreign + M)).write_text("{}")

    runs = []
    for hours_ago in (3, 2, 1):
        run = services.create_run(job)
        # Distinct names: the default template has a one-second resolution.
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(hours=hours_ago))
        run = services.execute_run(run.pk)
        assert run.state == Run.State.SUCCEEDED, run.error
        runs.append(run)
        # jobs.services will call this itself in its "retention" phase once wired; until
        # then the test applies it by hand, as the run would: the local copies, and each
        # destination whose upload succeeded, protecting the archive this run just wrote.
        protect = {run.archive_name}
        local = retention.apply_local(run.config, protect=protect)
        with LocalBackend.from_destination(destination).session() as session:
            at_destination = apply(session, run.config, protect=protect)
        assert local.errors == [] and at_destination.errors == []

    newest = [runs[1].archive_name, runs[2].archive_name]
    ours = sorted(n + s for n in newest for s in ("", M))
    assert sorted(p.name for p in remote.iterdir()) == sorted(
        [*ours, "backupsite-key.age", "notes.txt", foreign, foreign + M]
    )
    assert sorted(p.name for p in services.archive_dir_for(job.slug).iterdir()) == ours
    runs[0].refresh_from_db()
    assert not runs[0].can_download and runs[2].can_download


def test_after_run_covers_the_local_copies_and_the_given_destinations_and_never_raises(job, folders, monkeypatch):
    destination = job.destinations.get()
    remote = folders["backups"] / "backupsite" / "office"
    local = folders["archives"] / "office"
    remote.mkdir(parents=True)
    local.mkdir(parents=True)
    remote_names = [write_backup(remote, "office", d) for d in (0, 1, 2)]
    local_names = [write_backup(local, "office", d) for d in (0, 1, 2)]
    places = [{"id": destination.pk, "name": "Local disk"}, {"id": 99999, "name": "Gone"}]

    lines = retention.after_run(snapshot(keep_last=2), protect={remote_names[0]}, destinations=places, now=NOW)

    assert sorted(p.name for p in remote.iterdir()) == sorted(n + s for n in remote_names[:2] for s in ("", M))
    assert sorted(p.name for p in local.iterdir()) == sorted(n + s for n in local_names[:2] for s in ("", M))
    assert "Retention at this server: deleted 1 old backup(s), kept 2." in lines
    assert "Retention at Local disk: deleted 1 old backup(s), kept 2." in lines
    assert "Retention at Gone: The destination was deleted." in lines

    def bug(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(retention, "apply_local", bug)
    lines = retention.after_run(snapshot(keep_last=1), protect=(), destinations=places[:1], now=NOW)
    assert lines[0] == "Retention at this server: internal error; see the worker log."
    assert not (remote / remote_names[1]).exists()  # the destination was still done
