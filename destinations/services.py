"""What the destination pages do, so the views stay thin.

* :func:`list_rows` / :func:`with_last_uploads`: the list page's queries: each
  destination with the number of jobs using it and its last upload (two queries for a
  page, none per row).
* :func:`throttle_test` / :func:`run_test`: the test-connection guard (administrators
  only is the views' permission check; here the shared rate limiter, per user and per
  client address) and a test that never raises.
* Tokens the form page carries between a test and the save, all made and checked here:

  - a **trust token** (signed) for a fingerprint the test saw, so "I have checked this
    fingerprint: trust it" can only store the value the server really showed, into the
    setting the kind named (``Fingerprint.setting``);
  - a **tested token** (signed): the test result plus a keyed digest of the exact
    settings and secrets tested, so a test made before saving is recorded on the saved
    destination only if nothing changed in between;
  - a **pending-secrets token** (encrypted with the field-encryption keys, 15 minutes,
    bound to the user): without JavaScript the test button reloads the page, and a
    password typed before it must not have to be typed again; it is never shown in clear.

* :func:`save`, :func:`trust_and_retest`, :func:`delete`: every create, change and
  delete goes through :mod:`backupsite.configwrite`.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from cryptography.fernet import InvalidToken
from django.core import signing
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.translation import gettext as _

from backupsite import configwrite
from backupsite.crypto import fernet
from backupsite.ratelimit import RateLimited, hit
from destinations.backends import get_kind
from destinations.backends.base import Backend, DestinationError, Fingerprint, PermanentError, TestResult
from destinations.models import Destination

log = logging.getLogger(__name__)

TOKEN_MAX_AGE = 3600  # seconds a trust or tested token stays valid
PENDING_MAX_AGE = 900  # seconds typed secrets are carried over a page reload
_TRUST_SALT = "backupsite.destinations.trust"
_TESTED_SALT = "backupsite.destinations.tested"


# --- the list ------------------------------------------------------------------------------
def list_rows():
    """Destinations with ``last_upload_pk`` (their newest upload) and ``job_count``, for
    the list page (which hands its page of rows to :func:`with_last_uploads`)."""
    from jobs.models import Upload

    newest = Upload.objects.filter(destination=OuterRef("pk")).order_by("-pk").values("pk")[:1]
    jobs = (
        Destination.jobs.through.objects.filter(destination=OuterRef("pk"))
        .order_by()
        .values("destination")
        .annotate(count=Count("job"))
        .values("count")
    )
    return (
        Destination.objects.defer("secrets")  # (a list page decrypts nothing)
        .annotate(last_upload_pk=Subquery(newest), job_count=Coalesce(Subquery(jobs), 0))
        .order_by("name")
    )


def with_last_uploads(destinations) -> list[Destination]:
    """*destinations* (rows of :func:`list_rows`), each with ``last_upload``: an Upload, or
    None. One query for the page, however many rows it shows."""
    from jobs.models import Upload

    return Upload.attach(destinations, last_upload="last_upload_pk")


def recent_uploads(destination: Destination, limit: int = 10):
    return destination.uploads.select_related("run").order_by("-pk")[:limit]


# --- testing -------------------------------------------------------------------------------
class TestThrottled(Exception):
    __test__ = False

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(_("Too many connection tests; try again in %(seconds)s seconds.") % {"seconds": retry_after})


def throttle_test(request) -> None:
    """Count one connection test for this administrator and this client address; raise
    :class:`TestThrottled` over the limits of ``backupsite.ratelimit.LIMITS``."""
    try:
        hit("destination-test", f"user:{request.user.pk}")
        hit("destination-test-ip", f"ip:{configwrite.client_ip(request) or 'unknown'}")
    except RateLimited as exc:
        raise TestThrottled(exc.retry_after) from None


def run_test(backend: Backend) -> TestResult:
    """``backend.test()``, which reports destination problems as a failed result; a bug in
    a kind becomes a failed result too, logged by exception type only (a library's
    message may quote its configuration)."""
    try:
        return backend.test()
    except DestinationError as exc:
        return TestResult(ok=False, message=exc.message)
    except Exception as exc:  # noqa: BLE001 - a test button must answer
        log.error("Connection test of a %s destination failed unexpectedly: %s", backend.kind, type(exc).__name__)
        return TestResult(ok=False, message=_("The test failed unexpectedly; the server log names the error type."))


def test_kind_form(request, form, *, destination_id: int | None = None) -> tuple[int, dict]:
    """Test the unsaved settings of a kind's form (the destination pages' and the
    wizard's Test button): ``(HTTP status, what the result region shows)``. 422: the
    settings have errors (shown next to their fields on a full page); 429: throttled.
    A test that saw a server identity to confirm comes with a trust token for it; every
    test with a tested token, so a save of exactly these settings can record it."""
    if not form.is_valid():
        return 422, {"test_error": _("Correct the settings marked below, then test again.")}
    try:
        throttle_test(request)
    except TestThrottled as exc:
        return 429, {"throttled": str(exc), "retry_after": exc.retry_after}
    kind = form.backend_class.kind
    result = run_test(form.backend())
    secrets = form.secrets_from_cleaned(form.cleaned_data)
    region = {"result": result, "tested": tested_token(kind, form.parsed_settings, secrets, result)}
    if result.needs_confirmation:
        region["trust_token"] = trust_token(kind, result.fingerprint, destination_id)
    return 200, region


def test_destination(destination: Destination) -> TestResult:
    """Test a saved destination and record the result on it."""
    try:
        backend = destination.backend()
    except DestinationError as exc:  # invalid settings, unknown kind
        result = TestResult(ok=False, message=exc.message)
    else:
        result = run_test(backend)
    destination.record_test(result)
    return result


# --- trust tokens ------------------------------------------------------------------------------
class TokenError(Exception):
    """A token from a form is invalid or expired."""


def conf_fields(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_kind(kind).conf_class)}


def trust_token(kind: str, fingerprint: Fingerprint, destination_id: int | None = None) -> str:
    return signing.dumps(
        {"k": kind, "s": fingerprint.setting, "v": fingerprint.value, "d": destination_id}, salt=_TRUST_SALT
    )


def read_trust_token(token: str, kind: str, destination_id: int | None = None) -> tuple[str, str]:
    """``(setting, value)`` of a trust token made for this kind (and destination)."""
    try:
        data = signing.loads(token or "", salt=_TRUST_SALT, max_age=TOKEN_MAX_AGE)
    except signing.BadSignature:
        raise TokenError(_("The fingerprint confirmation has expired or is invalid; test again.")) from None
    if not isinstance(data, dict) or data.get("k") != kind or data.get("d") not in (None, destination_id):
        raise TokenError(_("This fingerprint confirmation belongs to another destination; test again."))
    setting, value = data.get("s"), data.get("v")
    if setting not in conf_fields(kind) or not isinstance(value, str) or not value:
        raise TokenError(_("This fingerprint confirmation is not valid for this kind of destination."))
    return setting, value


def pinned_from_tokens(tokens, kind: str, destination_id: int | None = None) -> tuple[dict, list[str]]:
    """The settings confirmed by valid trust tokens, and those tokens (to carry on)."""
    pinned, kept = {}, []
    for token in tokens:
        try:
            setting, value = read_trust_token(token, kind, destination_id)
        except TokenError:
            continue
        pinned[setting] = value
        kept.append(token)
    return pinned, kept


# --- tested tokens -----------------------------------------------------------------------------
def _digest(kind: str, settings: dict, secrets: dict) -> str:
    payload = json.dumps([kind, settings, dict(secrets)], sort_keys=True, default=str)
    return salted_hmac(_TESTED_SALT, payload, algorithm="sha256").hexdigest()


def tested_token(kind: str, settings: dict, secrets: dict, result: TestResult) -> str:
    return signing.dumps({"h": _digest(kind, settings, secrets), "r": result.to_dict()}, salt=_TESTED_SALT)


def tested_result(token: str, kind: str, settings: dict, secrets: dict) -> TestResult | None:
    """The result carried by *token* if it was made for exactly these settings and
    secrets, else None."""
    if not token:
        return None
    try:
        data = signing.loads(token, salt=_TESTED_SALT, max_age=TOKEN_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or not constant_time_compare(
        str(data.get("h", "")), _digest(kind, settings, secrets)
    ):
        return None
    try:
        return TestResult.from_dict(data.get("r"))
    except (TypeError, ValueError):
        return None


# --- secrets typed before a reload ------------------------------------------------------------------
def pending_token(user, kind: str, secrets: dict) -> str:
    typed = {k: v for k, v in secrets.items() if isinstance(v, str) and v}
    if not typed:
        return ""
    payload = json.dumps({"u": user.pk, "k": kind, "s": typed})
    return fernet().encrypt(payload.encode()).decode()


def read_pending(token: str, user, kind: str) -> dict:
    if not token:
        return {}
    try:
        data = json.loads(fernet().decrypt(token.encode(), ttl=PENDING_MAX_AGE))
    except (InvalidToken, ValueError, TypeError):
        return {}
    if not isinstance(data, dict) or data.get("u") != user.pk or data.get("k") != kind:
        return {}
    secrets = data.get("s")
    return {k: v for k, v in secrets.items() if isinstance(v, str)} if isinstance(secrets, dict) else {}


def typed_secrets(kind_form) -> dict:
    """The secrets typed in this submission (not the stored ones)."""
    cleaned = getattr(kind_form, "cleaned_data", {}) or {}
    typed = {name: cleaned.get(name) for name in kind_form.secret_fields if cleaned.get(name)}
    return {**kind_form.pending_secrets, **typed}


# --- writes ---------------------------------------------------------------------------------------------
def _reset_test(destination: Destination) -> None:
    destination.last_test_at = None
    destination.last_test_ok = None
    destination.last_test_message = ""
    destination.last_test_details = {}


@transaction.atomic
def save(common_form, kind_form, *, request, tested: str = "") -> Destination:
    """Create or change a destination from the valid common form (name, enabled) and
    the valid kind form. A test made on the form for exactly what is saved is recorded;
    a change of settings or secrets without one clears the last test (it tested
    something else)."""
    destination = common_form.save(commit=False)
    kind = kind_form.backend_class.kind
    settings = dict(kind_form.parsed_settings or {})
    secrets = kind_form.secrets_from_cleaned(kind_form.cleaned_data)
    creating = destination.pk is None
    changed = creating or destination.settings != settings or dict(destination.secrets) != secrets
    destination.kind = kind
    destination.settings = settings
    destination.secrets = secrets
    if changed:
        _reset_test(destination)
    configwrite.save(destination, request=request)
    if changed:
        record_tested(destination, tested)
    return destination


def record_tested(destination: Destination, token: str) -> TestResult | None:
    """Record on the saved *destination* the test its form carried (a tested token), if
    that test was made for exactly its settings and secrets."""
    result = tested_result(token, destination.kind, dict(destination.settings), dict(destination.secrets))
    if result is not None:
        destination.record_test(result)
    return result


def trust_and_retest(destination: Destination, token: str, *, request) -> TestResult:
    """Store the fingerprint of *token* (made from this destination's last test) into
    its setting, save through configwrite, and test again."""
    setting, value = read_trust_token(token, destination.kind, destination.pk)
    seen = destination.last_test.fingerprint if destination.last_test else None
    if seen is None or seen.setting != setting or seen.value != value:
        raise TokenError(_("The fingerprint to trust is not the one the last test saw; test again."))
    settings = {**destination.settings, setting: value}
    try:
        destination.kind_class.conf_class.parse(settings)
    except ValueError as exc:
        raise TokenError(_("The fingerprint cannot be stored: %(error)s") % {"error": exc}) from None
    destination.settings = settings
    configwrite.save(destination, request=request)
    return test_destination(destination)


class InUse(PermanentError):
    def __init__(self, jobs: list) -> None:
        self.jobs = jobs
        names = ", ".join(f"“{job.name}”" for job in jobs)
        super().__init__(_("This destination is used by %(jobs)s; remove it from there first.") % {"jobs": names})


def jobs_using(destination: Destination) -> list:
    """The jobs and planning exports that write to *destination* (each has a name and a
    page), jobs first."""
    return list(destination.jobs.order_by("name")) + list(destination.exports.order_by("name"))


@transaction.atomic
def delete(destination: Destination, *, request) -> None:
    """Delete through configwrite; refused (:class:`InUse`) while a job or a planning
    export uses it. Files
    already at the destination stay there; the uploads' history keeps its name."""
    locked = Destination.objects.select_for_update().filter(pk=destination.pk).first()
    if locked is None:
        return
    jobs = jobs_using(locked)
    if jobs:
        raise InUse(jobs)
    configwrite.delete(locked, request=request)


__all__ = [
    "InUse",
    "TestThrottled",
    "TokenError",
    "delete",
    "jobs_using",
    "list_rows",
    "pending_token",
    "pinned_from_tokens",
    "read_pending",
    "read_trust_token",
    "record_tested",
    "run_test",
    "save",
    "test_destination",
    "test_kind_form",
    "tested_result",
    "tested_token",
    "throttle_test",
    "trust_and_retest",
    "trust_token",
    "with_last_uploads",
]
