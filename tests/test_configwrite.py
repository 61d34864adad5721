"""The configuration-write layer: old → new for every field, secrets only as "changed"."""

from __future__ import annotations

import pytest

from backupsite import configwrite
from destinations.models import Destination


def test_create_change_delete_with_secrets_masked(db, alice, config_changes, folders):
    d = Destination(name="NAS", kind="local", settings={"path": "/srv/a"}, secrets={"password": "hunter2-secret"})
    change = configwrite.save(d, actor=alice)
    assert change.action == "created" and change.actor == alice and change.object_repr == "NAS"
    assert {c.field: c.display for c in change.changes}["secrets.password"] == "set"
    assert "hunter2-secret" not in repr(change) and "hunter2-secret" not in str([c.display for c in change.changes])

    d = Destination.objects.get(pk=d.pk)
    d.settings = {"path": "/srv/b"}
    d.secrets = {"password": "new-secret-value"}
    change = configwrite.save(d, actor=alice)
    shown = {c.field: c.display for c in change.changes}
    assert shown == {"settings.path": "/srv/a → /srv/b", "secrets.password": "changed"}
    assert "new-secret-value" not in repr(change)

    # Saving without a change sends nothing.
    before = len(config_changes)
    configwrite.save(Destination.objects.get(pk=d.pk), actor=alice)
    assert len(config_changes) == before

    change = configwrite.delete(Destination.objects.get(pk=d.pk), actor=alice)
    assert change.action == "deleted" and not Destination.objects.filter(pk=d.pk).exists()
    assert [c.action for c in config_changes] == ["created", "changed", "deleted"]


def test_many_to_many_and_choices_are_shown_by_name(job, alice, config_changes):
    from jobs.models import Job

    other = Destination.objects.create(name="Second disk", kind="local", settings={"path": "/srv/x"})
    job = Job.objects.get(pk=job.pk)
    job.interval = Job.Interval.DAILY
    change = configwrite.save(job, actor=alice, m2m={"destinations": [*job.destinations.all(), other]})
    shown = {c.field: c.display for c in change.changes}
    assert shown["interval"] == "Manually only → Daily"
    assert shown["destinations"] == "Local disk → Local disk, Second disk"


def test_unregistered_models_are_refused(db):
    from django.contrib.auth.models import Group

    with pytest.raises(LookupError):
        configwrite.save(Group(name="x"))
