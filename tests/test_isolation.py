"""Per-test and per-request state that must not survive its test or its request.

``tests/test_wizard.py`` before ``tests/test_audit.py`` once made every later audit test
see no AuditEvent: a wizard test cleared *all* ``config_changed`` receivers in a
``finally``, the audit log's among them. The audit log itself keeps its per-request
state in a context variable the middleware resets: two requests of one worker thread,
the first failing half-way, never share an actor, a batch or the e-mail list."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from backupsite import audit, configwrite
from backupsite.models import AuditEvent
from destinations.models import Destination
from tests.isolation import ReceiversLost, receivers_kept

pytestmark = pytest.mark.django_db


def test_a_test_that_disconnects_the_audit_log_fails_itself_and_the_next_test_is_still_audited(alice, folders):
    with pytest.raises(ReceiversLost, match=r"backupsite\.audit\.config_changed"), receivers_kept():
        configwrite.config_changed.receivers.clear()  # what the wizard test did
    # The next test: its configuration change is audited as usual.
    configwrite.save(Destination(name="NAS", kind="local", settings={"path": str(folders["backups"])}), actor=alice)
    assert list(AuditEvent.objects.values_list("action", "actor_name")) == [("created", "alice")]


def test_receivers_a_test_connects_and_disconnects_itself_are_fine():
    def receiver(sender, change, **kw):
        pass

    with receivers_kept():
        configwrite.config_changed.connect(receiver)
        configwrite.config_changed.disconnect(receiver)
    assert any(key[0] == "backupsite.audit.config_changed" for key, *_ in configwrite.config_changed.receivers)


def _request(user, address):
    request = RequestFactory().post("/", REMOTE_ADDR=address)
    request.user = user
    return request


def test_two_requests_of_one_thread_share_no_audit_state_even_when_the_first_fails(alice, bob, folders):
    seen = []

    def failing_view(request):
        nas = Destination(name="NAS", kind="local", settings={"path": str(folders["backups"])})
        configwrite.save(nas, request=request)
        seen.append(audit._current.get())
        raise RuntimeError("the view failed half-way")

    def second_view(request):
        audit.record(bob, audit.DOWNLOAD, where="this server")  # a user, no request: the request's address
        seen.append(audit._current.get())
        return "ok"

    with pytest.raises(RuntimeError):
        audit.AuditMiddleware(failing_view)(_request(alice, "192.0.2.10"))
    assert audit._current.get() is None
    assert audit.AuditMiddleware(second_view)(_request(bob, "192.0.2.20")) == "ok"
    assert audit._current.get() is None

    first, second = AuditEvent.objects.order_by("pk")
    assert (first.actor_name, first.ip, first.action) == ("alice", "192.0.2.10", "created")
    assert (second.actor_name, second.ip, second.action) == ("bob", "192.0.2.20", audit.DOWNLOAD)
    assert first.batch and second.batch and first.batch != second.batch
    assert seen[0] is not seen[1] and seen[1].notify == []  # the failed request's e-mail list stayed its own
