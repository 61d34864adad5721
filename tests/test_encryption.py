"""Encrypted runs: restorable with the stock age CLI, the key file and the password only."""

from __future__ import annotations

import os
import pty
import select
import subprocess

import pyrage
import pytest
from django.urls import reverse

from jobs import services
from jobs.engine import agekeys
from jobs.models import Job, Run
from tests.conftest import require_binary, restore_with_stock_tools, trees_identical


def age_decrypt_with_password(key_file, archive, output, password: str) -> str:
    """Run `age -d -i KEY -o OUT ARCHIVE` on a pseudo-terminal and type the password at
    its prompt, as a person would. Returns what age printed."""
    age = require_binary("age")
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        os.execv(age, [age, "-d", "-i", str(key_file), "-o", str(output), str(archive)])  # noqa: S606
    seen = b""
    typed = False
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            os.kill(pid, 9)
            raise AssertionError(f"age did not answer; it printed {seen!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if not typed and b"passphrase" in seen.lower():
            os.write(fd, password.encode() + b"\n")
            typed = True
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    return seen.decode(errors="replace")


@pytest.fixture
def encrypted_job(job):
    job.set_backup_password("correct horse battery staple")
    job.save()
    return job


def test_an_encrypted_run_restores_with_stock_age_key_file_and_password(encrypted_job, folders, source_tree, tmp_path):
    run = services.execute_run(services.create_run(encrypted_job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    assert run.archive_name.endswith(".tar.zst.age")
    remote = folders["backups"] / "backupsite" / encrypted_job.slug
    names = sorted(p.name for p in remote.iterdir())
    own_key = agekeys.key_file_name(encrypted_job.age_recipient)
    assert names == sorted([run.archive_name, run.archive_name + ".manifest.json", agekeys.KEY_FILE_NAME, own_key])
    assert (remote / own_key).read_bytes() == (remote / agekeys.KEY_FILE_NAME).read_bytes() == run.key_file
    archive = remote / run.archive_name
    assert archive.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert b"Invoice 42" not in archive.read_bytes()

    plain = tmp_path / "restore.tar.zst"
    printed = age_decrypt_with_password(remote / agekeys.KEY_FILE_NAME, archive, plain, "correct horse battery staple")
    assert "passphrase" in printed.lower()
    restore_with_stock_tools(plain, tmp_path / "restore")
    assert trees_identical(source_tree, tmp_path / "restore" / "office-files")


def test_backing_up_never_needs_the_password_and_the_manifest_names_the_recipient(encrypted_job, folders):
    import json

    run = services.execute_run(services.create_run(encrypted_job).pk)
    manifest = json.loads(run.local_file.with_name(run.archive_name + ".manifest.json").read_text())
    assert manifest["archive"]["encryption"] == {
        "scheme": "age",
        "recipient": encrypted_job.age_recipient,
        "key_file": f"backupsite-key-{agekeys.key_id(encrypted_job.age_recipient)}.age",
    }
    assert "correct horse" not in json.dumps(run.config) and "AGE-SECRET-KEY" not in json.dumps(run.config)


def test_changing_the_password_keeps_old_backups_readable(encrypted_job, folders):
    first = services.execute_run(services.create_run(encrypted_job).pk)
    recipient = encrypted_job.age_recipient
    with pytest.raises(agekeys.KeyError_):
        encrypted_job.set_backup_password("new password")  # the old one is required
    with pytest.raises(agekeys.KeyError_, match="Wrong backup password"):
        encrypted_job.set_backup_password("new password", old_password="wrong")
    encrypted_job.set_backup_password("new password", old_password="correct horse battery staple")
    encrypted_job.save()
    assert encrypted_job.age_recipient == recipient  # the same identity, re-wrapped
    identity = pyrage.x25519.Identity.from_str(encrypted_job.identity("new password"))
    assert pyrage.decrypt(first.local_file.read_bytes(), [identity])
    with pytest.raises(agekeys.KeyError_):
        encrypted_job.identity("correct horse battery staple")
    # The first run's own copy of the key was re-wrapped too: the new password opens it.
    first.refresh_from_db()
    assert first.key_file == encrypted_job.key_file
    # The next run uploads the re-wrapped key file beside the backups, under both names.
    services.execute_run(services.create_run(encrypted_job).pk)
    remote = folders["backups"] / "backupsite" / encrypted_job.slug
    assert (remote / agekeys.KEY_FILE_NAME).read_bytes() == encrypted_job.key_file
    assert (remote / agekeys.key_file_name(recipient)).read_bytes() == encrypted_job.key_file


def test_public_key_mode_keeps_no_key_on_the_server(job, folders):
    identity, recipient = agekeys.new_identity()
    job.set_recipient(recipient)
    job.save()
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED
    remote = folders["backups"] / "backupsite" / job.slug
    assert not [p.name for p in remote.iterdir() if agekeys.is_key_file_name(p.name)]
    assert job.key_file is None and run.key_file is None and not run.age_identity_wrapped
    with pytest.raises(agekeys.KeyError_):
        job.identity("anything")
    assert pyrage.decrypt((remote / run.archive_name).read_bytes(), [pyrage.x25519.Identity.from_str(identity)])


def test_a_bad_recipient_is_refused(job):
    with pytest.raises(agekeys.KeyError_):
        job.set_recipient("age1notakey")


def test_run_page_shows_the_age_restore_command(client, bob, encrypted_job):
    run = services.execute_run(services.create_run(encrypted_job).pk)
    client.force_login(bob)
    html = client.get(run.get_absolute_url()).content.decode()
    assert f"age -d -i {agekeys.key_file_name(encrypted_job.age_recipient)} {run.archive_name}" in html


def test_not_enough_free_space_fails_before_writing(job, settings):
    settings.BACKUPSITE_STAGING_MARGIN_BYTES = 10**18
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    assert run.error.startswith("Not enough free space for the archive")
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_the_archive_fails_cleanly(job, settings, tiny_disk, source_tree):
    settings.BACKUPSITE_ARCHIVE_DIR = tiny_disk
    settings.BACKUPSITE_STAGING_MARGIN_BYTES = 0
    (source_tree / "more-random.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    Run.objects.create(job=job, job_name=job.name, state=Run.State.SUCCEEDED, archive_size=1)  # small estimate
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    assert run.error == "No space left on the staging disk while writing the archive."
    assert [p.name for p in (tiny_disk / job.slug).iterdir()] == []


def test_disk_full_at_the_local_destination_fails_without_a_partial_file(job, settings, tiny_disk, folders):
    settings.BACKUPSITE_LOCAL_ROOTS = [str(folders["backups"]), str(tiny_disk)]
    destination = job.destinations.get()
    destination.settings = {"path": str(tiny_disk)}
    destination.save()
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    upload = run.uploads.get()
    assert upload.error.startswith("No space left on the destination") and upload.attempts == 1
    assert list((tiny_disk / "backupsite" / job.slug).iterdir()) == []


def test_job_model_encryption_choices_are_consistent(db):
    job = Job(name="x")
    assert not job.encrypts and job.key_file is None


def test_the_key_file_downloads_from_the_run_page_and_opens_the_downloaded_archive(
    client, bob, charlie, encrypted_job, tmp_path
):
    """A user who only has the browser: the archive and its key file from the run
    page, the password, and the stock age CLI are enough."""
    run = services.execute_run(services.create_run(encrypted_job).pk)
    client.force_login(bob)
    html = client.get(run.get_absolute_url()).content.decode()
    assert reverse("jobs:run_key_file", args=[run.pk]) in html
    response = client.get(reverse("jobs:run_key_file", args=[run.pk]))
    assert response.status_code == 200
    name = agekeys.key_file_name(encrypted_job.age_recipient)
    assert response["Content-Disposition"] == f'attachment; filename="{name}"'
    key = tmp_path / name
    key.write_bytes(response.content)
    archive = tmp_path / run.archive_name
    archive.write_bytes(b"".join(client.get(reverse("jobs:run_download", args=[run.pk])).streaming_content))
    plain = tmp_path / "plain.tar.zst"
    age_decrypt_with_password(key, archive, plain, "correct horse battery staple")
    target = tmp_path / "restore"
    restore_with_stock_tools(plain, target)
    assert (target / "office-files").is_dir()
    # Viewers may not download; a run without a key file has none to offer.
    client.force_login(charlie)
    assert client.get(reverse("jobs:run_key_file", args=[run.pk])).status_code == 403


def test_an_unencrypted_run_has_no_key_file(client, bob, job):
    run = services.execute_run(services.create_run(job).pk)
    client.force_login(bob)
    assert reverse("jobs:run_key_file", args=[run.pk]) not in client.get(run.get_absolute_url()).content.decode()
    assert client.get(reverse("jobs:run_key_file", args=[run.pk])).status_code == 404
