"""Slugs become folder names: a crafted one never makes, lists or deletes anything
outside the allowed roots (issue 6, item 5), and destinations get unique slugs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.core import serializers
from django.core.exceptions import ValidationError
from django.core.management import call_command

from backupsite.slugs import UnsafeFolderName, safe_folder_name, unique_slug
from destinations.models import Destination
from jobs import retention, services
from jobs.models import Job, Run, Source
from jobs.sources import SourceError
from jobs.sources import get_kind as get_source_kind
from tests.conftest import make_tree, require_binary

CRAFTED = ["../../escape", "../escape", "..", ".", "a/b", "/abs", "Office", "-rf", "_x", "a b", "é", "x\n", "x" * 101]


@pytest.mark.parametrize("slug", ["office-backup", "nas-1-2", "a_b", "0", "x" * 100])
def test_plain_slugs_are_safe_folder_names(slug):
    assert safe_folder_name(slug) == slug


@pytest.mark.parametrize("slug", [*CRAFTED, "", None])
def test_anything_else_is_refused_with_a_readable_message(slug):
    with pytest.raises(UnsafeFolderName, match=r"not allowed|empty"):
        safe_folder_name(slug, "job folder name")


def test_generated_slugs_are_always_safe(db):
    for name in ("Office backup", "  ", "../../escape", "Ünïcødé Jöb", "-_-", "A" * 200, "a/b\\c"):
        safe_folder_name(unique_slug(Job, name, fallback="job"))


# --- the models ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", [Job, Source, Destination])
def test_models_refuse_a_crafted_slug_in_full_clean_and_in_save(db, model):
    extra = {"kind": "local"} if model is Destination else {"kind": "directory"} if model is Source else {}
    row = model(name="Crafted", slug="../../escape", **extra)
    with pytest.raises(ValidationError) as excinfo:
        row.full_clean()
    assert "slug" in excinfo.value.message_dict
    with pytest.raises(ValidationError):
        row.save()  # without full_clean (the shell, a script)
    assert not model.objects.filter(name="Crafted").exists()
    ok = model(name="Fine", slug="my-own-slug", **extra)
    ok.save()
    assert model.objects.get(name="Fine").slug == "my-own-slug"


def test_destination_slugs_are_unique_like_job_slugs(db):
    first = Destination.objects.create(name="NAS 1", kind="local", settings={})
    second = Destination.objects.create(name="NAS-1", kind="local", settings={})  # no IntegrityError
    third = Destination.objects.create(name="nas 1!", kind="local", settings={})
    assert [first.slug, second.slug, third.slug] == ["nas-1", "nas-1-2", "nas-1-3"]
    second.name = "NAS-1 renamed"
    second.save()
    assert Destination.objects.get(pk=second.pk).slug == "nas-1-2"  # a slug never changes


def test_migrations_match_the_models(db):
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


# --- every place that builds a path --------------------------------------------------------
@pytest.mark.parametrize("slug", CRAFTED)
def test_the_archive_dir_and_sources_refuse_a_crafted_slug(tmp_path, settings, slug):
    settings.BACKUPSITE_ARCHIVE_DIR = tmp_path / "archives"
    with pytest.raises(UnsafeFolderName, match="job folder name"):
        services.archive_dir_for(slug)
    with pytest.raises(SourceError, match=r"^Office files: .*(not allowed|empty)"):
        get_source_kind("directory")("Office files", slug, {"path": str(tmp_path)})
    assert not (tmp_path / "archives").exists()


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under *root* with its type, size and modification time."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


@pytest.fixture
def layout(db, tmp_path, settings):
    """archives in <tmp>/data/archives, the destination in <tmp>/dest/backups, and bait
    where ``../../escape`` would lead from each: leftovers a sweep would delete, old
    backups retention would delete."""
    settings.BACKUPSITE_ARCHIVE_DIR = tmp_path / "data" / "archives"
    settings.BACKUPSITE_LOCAL_ROOTS = [str(tmp_path / "dest")]
    (tmp_path / "dest" / "backups").mkdir(parents=True)
    source = Source.objects.create(
        name="Office files", kind="directory", settings={"path": str(make_tree(tmp_path / "src"))}
    )
    destination = Destination.objects.create(
        name="Local disk", kind="local", settings={"path": str(tmp_path / "dest" / "backups")}
    )
    job = Job.objects.create(name="Office backup", report_to="ops@example.com", keep_last=1)
    job.sources.set([source])
    job.destinations.set([destination])
    for bait in (tmp_path / "escape", tmp_path / "dest" / "escape", tmp_path / "data" / "escape"):
        bait.mkdir(parents=True)
        (bait / ".leftover.tar.zst.partial").write_bytes(b"not yours")
        for day in ("2020-01-01", "2020-01-02"):
            (bait / f"escape-{day}-000000.tar.zst").write_bytes(b"old")
            (bait / f"escape-{day}-000000.tar.zst.manifest.json").write_bytes(b"{}")
    return {"job": job, "source": source, "root": tmp_path}


@pytest.mark.parametrize("slug", ["../../escape", "../escape", "..", "escape/../../../escape"])
def test_a_job_with_a_crafted_slug_fails_and_touches_nothing_outside_the_roots(layout, mailoutbox, slug):
    require_binary("zstd")
    root, job = layout["root"], layout["job"]
    Job.objects.filter(pk=job.pk).update(slug=slug)  # bypasses save() and its checks
    job.refresh_from_db()
    before = tree_state(root)
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    assert "job folder name" in run.error and "is not allowed" in run.error, run.error
    assert repr(slug) in run.error  # says which name, readably
    assert tree_state(root) == before  # nothing made, swept or deleted anywhere
    assert len(mailoutbox) == 1 and run.error in mailoutbox[0].body  # the usual failure alert


def test_a_crafted_slug_from_a_fixture_is_caught_when_the_job_runs(layout, tmp_path):
    """loaddata saves rows raw (no save(), no validation): the run still refuses."""
    require_binary("zstd")
    job = layout["job"]
    fixture = tmp_path / "crafted.json"
    rows = json.loads(serializers.serialize("json", [job]))
    rows[0]["fields"]["slug"] = "../../escape"
    fixture.write_text(json.dumps(rows))
    call_command("loaddata", str(fixture), verbosity=0)
    job.refresh_from_db()
    assert job.slug == "../../escape"
    before = tree_state(tmp_path)
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED and "is not allowed" in run.error
    assert tree_state(tmp_path) == before


def test_a_source_with_a_crafted_slug_fails_the_run_and_touches_nothing_outside(layout):
    require_binary("zstd")
    root, job = layout["root"], layout["job"]
    Source.objects.filter(pk=layout["source"].pk).update(slug="../../escape")
    inside = ("data", "data/archives")  # the job's own staging folder is made, as for any run

    def outside() -> dict[str, tuple]:
        return {k: v for k, v in tree_state(root).items() if k not in inside and not k.startswith("data/archives/")}

    before = outside()
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    assert "Office files" in run.error and "is not allowed" in run.error, run.error
    after = outside()
    assert after == before
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))


@pytest.mark.parametrize("slug", ["../../escape", "../escape", "..", "/abs", "escape/../../../escape"])
def test_retention_with_a_crafted_slug_reports_instead_of_listing_or_deleting(layout, slug):
    """Retention runs on snapshots (run.config), not on the row: both places it lists
    and deletes, this server's local copies and the destination, refuse the slug."""
    root = layout["root"]
    destination = layout["job"].destinations.get()
    before = tree_state(root)
    config = {"slug": slug, "archive_name_template": "{job}-{date}-{time}", "keep_last": 1}
    for result in (retention.apply_local(config), retention.apply_to_destination(destination.pk, config)):
        assert result.deleted == []
        assert result.errors and "folder name" in " ".join(result.errors), result.errors
    assert tree_state(root) == before
