"""USB storage against real mounted filesystems (tmpfs, loop-mounted ext4): an unplugged
disk is never written to (RELIABILITY 4), a full disk fails at once and leaves nothing
(RELIABILITY 3), labels and UUIDs are matched, and the disks seen are recorded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from destinations.backends.base import PermanentError, job_folder
from destinations.backends.usb import Mount, UsbBackend, UsbConf, UsbSession, disk_identity, mount_at, read_mounts
from destinations.models import Destination
from tests.mounts import loop_ext4, tmpfs, umount

pytest_plugins = ["tests.kinds.usb"]


@pytest.fixture
def media(tmp_path, settings) -> Path:
    """An allowed root like /media, with mount points made by the tests below it."""
    root = tmp_path / "media"
    root.mkdir()
    settings.BACKUPSITE_LOCAL_ROOTS = [str(root)]
    return root


def payload(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / f"payload-{size}.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def usb(path: Path, **settings) -> UsbBackend:
    return UsbBackend.from_settings({"path": str(path), **settings})


# --- unplugged ---------------------------------------------------------------------------
def test_an_empty_mount_point_is_refused_and_nothing_is_written(media, tmp_path):
    mount_point = media / "usb-disk"
    mount_point.mkdir()  # the disk is unplugged: only the empty folder is left
    backend = usb(mount_point)

    result = backend.test()
    assert not result.ok
    assert "No disk is mounted at" in result.message and str(mount_point) in result.message

    path, sha = payload(tmp_path, 1000)
    with pytest.raises(PermanentError, match="No disk is mounted"):
        backend.upload(path, job_folder("office"), "a.tar.zst", expected_size=1000, expected_sha256=sha)
    assert list(mount_point.iterdir()) == []  # the root filesystem got nothing


def test_a_disk_unplugged_after_use_leaves_an_empty_folder_that_is_refused(media, tmp_path):
    mount_point = media / "usb-disk"
    path, sha = payload(tmp_path, 5000)
    with tmpfs(mount_point, "8m"):
        usb(mount_point).upload(path, job_folder("office"), "a.tar.zst", expected_size=5000, expected_sha256=sha)
        assert (mount_point / "backupsite" / "office" / "a.tar.zst").is_file()
    assert mount_at(mount_point) is None
    with pytest.raises(PermanentError, match="No disk is mounted"):
        usb(mount_point).upload(path, job_folder("office"), "b.tar.zst", expected_size=5000)
    assert list(mount_point.iterdir()) == []


def test_a_missing_mount_point_is_refused(media):
    result = usb(media / "not-there").test()
    assert not result.ok and "No disk is mounted" in result.message


def test_a_folder_below_the_mount_point_is_not_a_mount_point(usb_disk, settings):
    settings.BACKUPSITE_LOCAL_ROOTS = [str(usb_disk.parent)]
    below = usb_disk / "sub"
    below.mkdir(exist_ok=True)
    result = usb(below).test()
    assert not result.ok and "No disk is mounted" in result.message


# --- full disk -------------------------------------------------------------------------------
def test_a_full_disk_fails_at_once_before_writing(media, tmp_path):
    mount_point = media / "small-disk"
    path, _sha = payload(tmp_path, 6 << 20)
    with tmpfs(mount_point, "4m"):
        with pytest.raises(PermanentError, match="is full") as info:
            usb(mount_point).upload(path, job_folder("office"), "big.tar.zst", expected_size=6 << 20)
        assert info.value.permanent  # never retried
        folder = mount_point / "backupsite" / "office"
        assert not folder.exists() or list(folder.iterdir()) == []


def test_running_out_of_space_while_writing_leaves_no_partial_file(media, tmp_path, monkeypatch):
    """The free-space check is bypassed (it would refuse first) to reach the kernel's ENOSPC."""
    monkeypatch.setattr(UsbSession, "free_space", lambda self: 1 << 40)
    mount_point = media / "small-disk"
    path, _sha = payload(tmp_path, 6 << 20)
    with tmpfs(mount_point, "4m"):
        with pytest.raises(PermanentError, match="No space left") as info:
            usb(mount_point).upload(path, job_folder("office"), "big.tar.zst", expected_size=6 << 20)
        assert info.value.permanent
        folder = mount_point / "backupsite" / "office"
        assert list(folder.iterdir()) == []  # neither the final name nor .big.tar.zst.partial


def test_a_run_to_a_full_usb_disk_fails_its_upload_once_with_the_reason(job, media, settings):
    from jobs import services
    from jobs.models import Run

    mount_point = media / "small-disk"
    with tmpfs(mount_point, "1m"):
        big = Path(job.sources.get().settings["path"]) / "big.bin"
        big.write_bytes(os.urandom(3 << 20))  # random: does not compress below 1 MiB
        destination = Destination.objects.create(name="USB", kind="usb", settings={"path": str(mount_point)})
        job.destinations.set([destination])
        run = services.execute_run(services.create_run(job).pk)
        upload = run.uploads.get()
        assert run.state == Run.State.FAILED
        assert upload.state == "failed" and upload.attempts == 1
        assert "is full" in upload.error
        assert not list((mount_point / "backupsite").rglob("*.tar.zst"))


# --- labels and UUIDs ------------------------------------------------------------------------------
def test_label_and_uuid_are_matched_and_a_wrong_disk_is_refused(media, tmp_path):
    mount_point = media / "usb-disk"
    path, _sha = payload(tmp_path, 2000)
    with loop_ext4(mount_point, tmp_path / "a.img", label="BACKUP-A") as fs_uuid:
        identity = disk_identity(mount_at(mount_point))
        assert identity.label == "BACKUP-A" and identity.uuid == fs_uuid

        result = usb(mount_point, label="backup-b, BACKUP-A").test()
        assert result.ok, result.message
        assert ("Label", "BACKUP-A") in result.details and ("UUID", fs_uuid) in result.details
        assert usb(mount_point, uuid=fs_uuid.upper()).test().ok

        wrong = usb(mount_point, label="BACKUP-B")
        result = wrong.test()
        assert not result.ok
        assert "“BACKUP-A”, not BACKUP-B" in result.message
        with pytest.raises(PermanentError, match="not BACKUP-B"):
            wrong.upload(path, job_folder("office"), "a.tar.zst", expected_size=2000)
        assert not (mount_point / "backupsite" / "office").exists()


def test_a_label_is_required_but_the_filesystem_has_none(usb_disk, settings):
    settings.BACKUPSITE_LOCAL_ROOTS = [str(usb_disk.parent)]
    result = usb(usb_disk, label="BACKUP-A").test()  # tmpfs: no label
    assert not result.ok and "cannot be read" in result.message


@pytest.mark.django_db
def test_rotated_disks_are_recorded_with_when_they_were_last_seen(media, tmp_path):
    mount_point = media / "usb-disk"
    destination = Destination.objects.create(
        name="Rotating USB", kind="usb", settings={"path": str(mount_point), "label": "BACKUP-A, BACKUP-B"}
    )
    for label in ("BACKUP-A", "BACKUP-B"):
        with loop_ext4(mount_point, tmp_path / f"{label}.img", label=label):
            destination.refresh_from_db()
            result = destination.backend().test()
            assert result.ok, result.message
            destination.record_test(result)
    destination.refresh_from_db()
    assert set(destination.status["usb_disks"]) == {"BACKUP-A", "BACKUP-B"}
    assert destination.status["usb_label"] == "BACKUP-B"
    facts = " ".join(destination.status_facts())
    assert "USB disk “BACKUP-B” last seen" in facts and "USB disk “BACKUP-A” last seen" in facts
    assert "free" in facts  # free space from the last test


# --- settings and mount table ------------------------------------------------------------------
def test_settings_are_strict(media):
    from destinations.backends.base import ConfError

    with pytest.raises(ConfError) as info:
        UsbConf.parse({"path": "/etc"})
    assert info.value.field == "path"
    with pytest.raises(ConfError) as info:
        UsbConf.parse({"path": str(media / "x"), "uuid": "not a uuid!"})
    assert info.value.field == "uuid"
    with pytest.raises(ConfError):
        UsbConf.parse({"path": str(media / "x"), "create": True})  # unknown key
    conf = UsbConf.parse({"path": str(media / "x"), "label": " A ,B,, ", "uuid": "ABCD-EF01"})
    assert conf.labels == ("A", "B") and conf.uuids == ("abcd-ef01",)


def test_mountinfo_is_parsed_with_its_escapes(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "45 27 8:17 / /media/My\\040Disk rw,relatime shared:1 - vfat /dev/sdb1 rw\n"
        "garbage line\n"
    )
    mounts = read_mounts(str(info))
    assert mounts[1] == Mount("/media/My Disk", "/dev/sdb1", "vfat", os.makedev(8, 17))
    assert len(mounts) == 2
    assert read_mounts(str(tmp_path / "missing")) is None


def test_the_kind_is_registered_with_its_form():
    from destinations.backends import REGISTRY
    from destinations.forms import kind_form

    assert REGISTRY["usb"] is UsbBackend
    form = kind_form("usb")
    assert list(form.fields) == ["path", "label", "uuid"]
    assert form.prefix == "usb"


def test_umount_helper_is_idempotent(tmp_path):
    umount(tmp_path / "never-mounted")  # no exception


@pytest.mark.django_db
def test_a_backup_on_the_usb_disk_is_verified_and_downloaded_from_it(job, usb_disk, settings, client, bob):
    """Item 4 with the USB kind: the local copy is gone, the disk holds the backup."""
    import io

    from django.core.management import call_command
    from django.urls import reverse

    from jobs import services

    settings.BACKUPSITE_LOCAL_ROOTS = [str(usb_disk.parent)]
    destination = Destination.objects.create(name="USB", kind="usb", settings={"path": str(usb_disk)})
    job.destinations.set([destination])
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == "succeeded", run.error
    archive = run.local_file.read_bytes()
    run.local_file.unlink()

    out = io.StringIO()
    call_command("verifybackup", str(run.pk), "--destination", "USB", stdout=out)
    assert "destination “USB”" in out.getvalue()
    assert run.uploads.get().verified_at is not None

    client.force_login(bob)
    response = client.get(reverse("jobs:run_download", args=[run.pk]), HTTP_RANGE="bytes=100-")
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == archive[100:]
    destination.refresh_from_db()
    assert destination.status["usb_seen_at"]  # the download saw the disk too
