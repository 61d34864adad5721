"""A job's key replaced (password → no encryption or a public key → a new password):
every older encrypted backup keeps its own key, in the panel and beside the archives.

Real engine runs to a local destination; the key files are opened with the stock ``age``
CLI and the password typed at its prompt (``tests.test_encryption``).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pyrage
import pytest
from django.urls import reverse
from django.utils import timezone

from jobs import services
from jobs.engine import agekeys
from jobs.models import Job, Run
from jobs.restores import restore_run
from jobs.verification import VerificationError, verify_run
from jobs.wizard.finish import apply_encryption
from tests.conftest import restore_with_stock_tools, trees_identical
from tests.test_encryption import age_decrypt_with_password

FIRST = "first password, long enough"
SECOND = "second password, also long"
M = ".manifest.json"


def run(job: Job, *, hours_ago: int = 0) -> Run:
    created = services.create_run(job)
    if hours_ago:  # distinct archive names: the default template has a one-second resolution
        Run.objects.filter(pk=created.pk).update(created_at=timezone.now() - timedelta(hours=hours_ago))
    result = services.execute_run(created.pk)
    assert result.state == Run.State.SUCCEEDED, result.error
    return result


def set_encryption(job: Job, mode: str, **content) -> None:
    """Change the job's encryption as the wizard's edit does (jobs.wizard.finish)."""
    apply_encryption(job, {"encryption": mode, **content})
    job.save()


def manifest_of(folder, run: Run) -> dict:
    return json.loads((folder / (run.archive_name + M)).read_text())


def public_key_in(key_file: bytes, password: str) -> str:
    return str(agekeys.identity_object(agekeys.unwrap_identity(key_file, password)).to_public())


@pytest.fixture
def three_runs(job):
    """Encrypted with FIRST; then no encryption; then a (new) password SECOND."""
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    first_key = job.age_recipient
    first = run(job, hours_ago=3)
    set_encryption(job, Job.Encryption.NONE)
    plain = run(job, hours_ago=2)
    set_encryption(job, Job.Encryption.PASSWORD, password=SECOND)
    assert job.age_recipient != first_key  # a new identity, not the first one re-wrapped
    third = run(job, hours_ago=1)
    for each in (first, plain, third):
        each.refresh_from_db()
    return {"first": first, "plain": plain, "third": third, "first_key": first_key, "third_key": job.age_recipient}


def test_the_first_run_still_verifies_and_restores_with_the_first_password(three_runs, source_tree, tmp_path):
    first, third = three_runs["first"], three_runs["third"]
    assert public_key_in(first.key_file, FIRST) == three_runs["first_key"]
    assert public_key_in(third.key_file, SECOND) == three_runs["third_key"]
    assert three_runs["plain"].key_file is None and not three_runs["plain"].archive_name.endswith(".age")

    assert verify_run(first, password=FIRST).ok  # the local copy
    assert verify_run(first, "Local disk", FIRST).ok
    assert verify_run(third, "Local disk", SECOND).ok
    with pytest.raises(VerificationError, match="Wrong backup password"):
        verify_run(first, "Local disk", SECOND)  # the first key was never re-wrapped with the second password

    restore_run(first, tmp_path / "restored", destination="Local disk", password=FIRST)
    assert trees_identical(source_tree, tmp_path / "restored" / "office-files")


def test_the_first_runs_key_file_download_is_the_first_key(three_runs, client, bob, tmp_path):
    first = three_runs["first"]
    client.force_login(bob)
    name = agekeys.key_file_name(three_runs["first_key"])
    assert f"age -d -i {name} {first.archive_name}" in client.get(first.get_absolute_url()).content.decode()
    response = client.get(reverse("jobs:run_key_file", args=[first.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{name}"'
    key = tmp_path / name
    key.write_bytes(response.content)
    archive = tmp_path / first.archive_name
    archive.write_bytes(b"".join(client.get(reverse("jobs:run_download", args=[first.pk])).streaming_content))
    plain = tmp_path / "first.tar.zst"
    age_decrypt_with_password(key, archive, plain, FIRST)
    restore_with_stock_tools(plain, tmp_path / "restore")
    assert (tmp_path / "restore" / "office-files").is_dir()


def test_both_key_files_are_beside_the_archives_and_each_manifest_names_its_own(three_runs, job, folders, tmp_path):
    first, plain, third = three_runs["first"], three_runs["plain"], three_runs["third"]
    first_name = agekeys.key_file_name(three_runs["first_key"])
    third_name = agekeys.key_file_name(three_runs["third_key"])
    remote = folders["backups"] / "backupsite" / job.slug
    local = services.archive_dir_for(job.slug)
    for folder in (remote, local):
        names = {p.name for p in folder.iterdir()}
        assert {first_name, third_name, agekeys.KEY_FILE_NAME} <= names, folder
        assert (folder / agekeys.KEY_FILE_NAME).read_bytes() == (folder / third_name).read_bytes()  # the newest key
        assert public_key_in((folder / first_name).read_bytes(), FIRST) == three_runs["first_key"]
        assert public_key_in((folder / third_name).read_bytes(), SECOND) == three_runs["third_key"]
        assert manifest_of(folder, first)["archive"]["encryption"]["key_file"] == first_name
        assert manifest_of(folder, third)["archive"]["encryption"]["key_file"] == third_name
        assert manifest_of(folder, plain)["archive"]["encryption"] is None
    # Only the destination and the first password (the restore guide's way): the key file
    # the manifest names opens the first archive with the stock tool.
    out = tmp_path / "first.tar.zst"
    age_decrypt_with_password(remote / first_name, remote / first.archive_name, out, FIRST)
    restore_with_stock_tools(out, tmp_path / "restore")
    assert (tmp_path / "restore" / "office-files").is_dir()


def test_the_panel_opens_an_old_archive_from_the_destination_alone(three_runs, folders):
    """A run row without its own key (made before runs kept theirs): the key file its
    manifest names, at the destination, is used; ``backupsite-key.age`` (the newest key)
    alone would not open it."""
    first = three_runs["first"]
    Run.objects.filter(pk=first.pk).update(age_identity_wrapped="")
    first.refresh_from_db()
    assert first.key_file is None  # the job's current key is not this archive's
    assert verify_run(first, "Local disk", FIRST).ok
    remote = folders["backups"] / "backupsite" / first.job_slug
    (remote / agekeys.key_file_name(three_runs["first_key"])).unlink()
    with pytest.raises(VerificationError, match="Wrong backup password"):
        verify_run(first, "Local disk", FIRST)


def test_retention_never_deletes_a_key_file(job, folders):
    """keep_last=1 over runs of two keys: the old archives go, every key file stays."""
    job.keep_last = 1
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    first_key = job.age_recipient
    first = run(job, hours_ago=3)
    second = run(job, hours_ago=2)  # the same key: it keeps the first key's archives company
    recipient = agekeys.new_identity()[1]
    set_encryption(job, Job.Encryption.RECIPIENT, age_recipient=recipient)
    run(job, hours_ago=1)
    set_encryption(job, Job.Encryption.PASSWORD, password=SECOND)
    last = run(job)
    remote = folders["backups"] / "backupsite" / job.slug
    for folder in (remote, services.archive_dir_for(job.slug)):
        names = {p.name for p in folder.iterdir()}
        assert first.archive_name not in names and second.archive_name not in names
        assert last.archive_name in names
        assert {agekeys.key_file_name(first_key), agekeys.key_file_name(job.age_recipient)} <= names
        assert agekeys.key_file_name(recipient) not in names  # a public key has no key file here
    second.refresh_from_db()
    assert public_key_in(second.key_file, FIRST) == first_key  # kept forever, it could still be opened


def test_a_password_change_reaches_the_runs_of_the_same_key_only(job):
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    old = run(job, hours_ago=2)
    set_encryption(job, Job.Encryption.NONE)
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    current = run(job, hours_ago=1)
    job.set_backup_password(SECOND, old_password=FIRST)
    job.save()
    old.refresh_from_db()
    current.refresh_from_db()
    assert public_key_in(current.key_file, SECOND) == job.age_recipient
    with pytest.raises(agekeys.KeyError_):
        agekeys.unwrap_identity(old.key_file, SECOND)  # another key: its own password stays
    assert public_key_in(old.key_file, FIRST) != job.age_recipient


def test_a_key_replaced_while_the_run_was_queued_archives_nothing(job):
    """Encrypting to a key whose identity is no longer anywhere would be a backup nobody
    can open: the run fails before writing."""
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    queued = services.create_run(job)
    set_encryption(job, Job.Encryption.NONE)
    set_encryption(job, Job.Encryption.PASSWORD, password=SECOND)
    result = services.execute_run(queued.pk)
    assert result.state == Run.State.FAILED
    assert result.error == "The job's encryption key changed after this run was queued: run it again."
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))


def test_a_row_without_its_own_key_uses_the_jobs_only_if_it_is_the_same_key(job):
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    older = run(job)
    Run.objects.filter(pk=older.pk).update(age_identity_wrapped="")  # as rows made before runs kept their key
    older.refresh_from_db()
    assert older.key_file == job.key_file
    set_encryption(job, Job.Encryption.PASSWORD, password=SECOND, old_password_checked=FIRST)  # same key
    older.refresh_from_db()
    assert older.key_file == job.key_file
    set_encryption(job, Job.Encryption.RECIPIENT, age_recipient=agekeys.new_identity()[1])
    set_encryption(job, Job.Encryption.PASSWORD, password=SECOND)
    older.refresh_from_db()
    assert older.key_file is None
    assert pyrage.x25519.Recipient.from_str(older.recipient)  # the snapshot still names the archive's key


def test_a_missing_key_file_of_an_older_key_is_put_back_on_the_next_upload(three_runs, job, folders):
    remote = folders["backups"] / "backupsite" / job.slug
    first_name = agekeys.key_file_name(three_runs["first_key"])
    (remote / first_name).unlink()  # e.g. uploaded before key files had their own names
    run(job)
    assert public_key_in((remote / first_name).read_bytes(), FIRST) == three_runs["first_key"]


def test_the_migration_gives_older_rows_a_copy_of_their_key_while_it_is_the_jobs(job):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("jobs.migrations.0016_runs_keep_their_key")
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    same_key = run(job, hours_ago=2)
    done = {"job": job, "job_name": job.name, "state": Run.State.SUCCEEDED}
    plain = Run.objects.create(**done, config={"job": {"encryption": "none", "age_recipient": ""}})
    other_key = Run.objects.create(
        **done,
        config={"job": {"encryption": "password", "age_recipient": agekeys.new_identity()[1]}},
    )
    Run.objects.filter(pk=same_key.pk).update(age_identity_wrapped="")  # as made before runs kept their key
    migration.keep_run_keys(apps, None)
    wrapped = dict(Run.objects.values_list("pk", "age_identity_wrapped"))
    assert wrapped == {same_key.pk: job.age_identity_wrapped, plain.pk: "", other_key.pk: ""}


def test_a_run_that_kept_the_old_wrapping_of_the_same_key_opens_with_the_new_password(job):
    """A password change that crossed the run's archive stage leaves the run the old
    wrapping of the same key: the job's current wrapping opens it with the new password."""
    set_encryption(job, Job.Encryption.PASSWORD, password=FIRST)
    made = run(job)
    before = made.age_identity_wrapped
    set_encryption(job, Job.Encryption.PASSWORD, password=SECOND, old_password_checked=FIRST)
    Run.objects.filter(pk=made.pk).update(age_identity_wrapped=before)  # the worker wrote its copy back late
    made.refresh_from_db()
    assert verify_run(made, password=SECOND).ok
    assert verify_run(made, password=FIRST).ok  # and its own copy still opens with the old one
