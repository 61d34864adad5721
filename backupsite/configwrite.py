"""One place for configuration writes.

Every create, change and delete of configuration (destinations now; jobs, sources,
planning exports and settings as they get their pages) goes through :func:`save` and
:func:`delete`, from the views, the wizard and the management commands alike. This layer
knows the old and the new value of every field, and which fields are secret, so the
audit log and the "configuration changed" e-mail to the other administrators hook in at
one place: the :data:`config_changed` signal, sent inside the transaction with a
:class:`ConfigChange` (receivers that send mail use ``transaction.on_commit``).

A model joins with one call, in its app's ``ready()``::

    configwrite.register(Destination, exclude=["last_test_at", ...], labels={...})

Fields of an :class:`~backupsite.crypto.EncryptedJSONField` are secret key by key; other
secret fields are named with ``secret_fields``. A secret's value never leaves this
module: a change shows only as "changed" (or "set" / "removed").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import models, transaction
from django.dispatch import Signal
from django.utils import timezone

from backupsite.clientip import client_ip  # the client's address behind trusted proxies
from backupsite.crypto import EncryptedJSONField
from backupsite.languages import in_site_language

#: Sent with ``sender=<model class>, change=<ConfigChange>`` inside the transaction.
config_changed = Signal()

CREATED, CHANGED, DELETED = "created", "changed", "deleted"


@dataclass(frozen=True)
class FieldChange:
    field: str  # "name", "settings.host", "secrets.password", "destinations"
    label: str
    old: str
    new: str
    secret: bool = False

    @property
    def display(self) -> str:
        """``old → new``, or for a secret only what happened to it."""
        if self.secret:
            if not self.old:
                return "set"
            if not self.new:
                return "removed"
            return "changed"
        return f"{self.old or '(empty)'} → {self.new or '(empty)'}"


@dataclass
class ConfigChange:
    action: str  # CREATED | CHANGED | DELETED
    model: str  # "destinations.destination"
    model_label: str  # "destination"
    object_id: int | None
    object_repr: str
    changes: list[FieldChange] = field(default_factory=list)
    actor: object | None = None
    ip: str | None = None
    at: datetime = field(default_factory=timezone.now)
    url: str = ""

    def __bool__(self) -> bool:  # a save that changed nothing is not worth an e-mail
        return self.action != CHANGED or bool(self.changes)


@dataclass
class Registration:
    model: type[models.Model]
    exclude: set[str]
    secret_fields: set[str]
    labels: dict[str, str]
    url: Callable[[models.Model], str] | None = None


_REGISTRY: dict[type[models.Model], Registration] = {}
_ALWAYS_EXCLUDED = {"id", "created_at", "updated_at"}
_SECRET = object()


def register(
    model: type[models.Model],
    *,
    exclude: Iterable[str] = (),
    secret_fields: Iterable[str] = (),
    labels: dict[str, str] | None = None,
    url: Callable[[models.Model], str] | None = None,
) -> None:
    """*url* gives the page of an object whose model has no ``get_absolute_url``."""
    _REGISTRY[model] = Registration(model, set(exclude) | _ALWAYS_EXCLUDED, set(secret_fields), dict(labels or {}), url)


def registration(model: type[models.Model]) -> Registration:
    try:
        return _REGISTRY[model]
    except KeyError:
        raise LookupError(f"{model.__name__} is not registered with backupsite.configwrite.") from None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z") if timezone.is_aware(value) else str(value)
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


@in_site_language
def snapshot(obj: models.Model) -> dict[str, tuple[str, object]]:
    """Field key → (label, value) for everything the audit shows; secret values are
    kept (to tell whether they changed) but marked by being wrapped in a tuple with
    :data:`_SECRET`."""
    reg = registration(type(obj))
    values: dict[str, tuple[str, object]] = {}
    opts = obj._meta
    for f in opts.concrete_fields:
        if f.name in reg.exclude or f.attname in reg.exclude or getattr(f, "auto_now", False):
            continue
        label = reg.labels.get(f.name, str(f.verbose_name))
        value = getattr(obj, f.attname)
        if isinstance(f, EncryptedJSONField):
            for key, secret in sorted(dict(value or {}).items()):
                values[f"{f.name}.{key}"] = (reg.labels.get(f"{f.name}.{key}", key), (_SECRET, secret))
        elif f.name in reg.secret_fields:
            values[f.name] = (label, (_SECRET, value))
        elif isinstance(f, models.JSONField) and isinstance(value, dict):
            for key, item in sorted(value.items()):
                values[f"{f.name}.{key}"] = (reg.labels.get(f"{f.name}.{key}", key), _text(item))
        elif f.is_relation:
            related = getattr(obj, f.name)
            values[f.name] = (label, _text(related))
        elif f.choices:
            values[f.name] = (label, _text(getattr(obj, f"get_{f.name}_display")()))
        else:
            values[f.name] = (label, _text(value))
    if obj.pk is not None:
        for m2m in opts.many_to_many:
            if m2m.name in reg.exclude:
                continue
            names = sorted(str(o) for o in getattr(obj, m2m.name).all())
            values[m2m.name] = (reg.labels.get(m2m.name, str(m2m.verbose_name)), ", ".join(names))
    return values


def _is_secret(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and value[0] is _SECRET


def diff(
    before: dict[str, tuple[str, object]] | None, after: dict[str, tuple[str, object]] | None
) -> list[FieldChange]:
    before, after = before or {}, after or {}
    changes = []
    for key in list(before) + [k for k in after if k not in before]:
        label_b, old = before.get(key, ("", None))
        label_a, new = after.get(key, ("", None))
        secret = _is_secret(old) or _is_secret(new)
        if secret:
            old_value = old[1] if _is_secret(old) else None
            new_value = new[1] if _is_secret(new) else None
            if old_value == new_value:
                continue
            changes.append(
                FieldChange(key, label_a or label_b, "set" if old_value else "", "set" if new_value else "", True)
            )
        elif (old or "") != (new or ""):
            changes.append(FieldChange(key, label_a or label_b, str(old or ""), str(new or "")))
    return changes


@in_site_language
def _change(action: str, obj, before, after, actor, request) -> ConfigChange:
    opts = obj._meta
    user = actor if actor is not None else getattr(request, "user", None)
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    url = ""
    link = registration(type(obj)).url or getattr(obj, "get_absolute_url", None)
    if action != DELETED and link is not None:
        try:
            url = link(obj) if registration(type(obj)).url else link()
        except Exception:  # noqa: BLE001 - a missing URL must not break a write
            url = ""
    return ConfigChange(
        action=action,
        model=opts.label_lower,
        model_label=str(opts.verbose_name),
        object_id=obj.pk,
        object_repr=str(obj),
        changes=diff(before, after),
        actor=user,
        ip=client_ip(request),
        url=url,
    )


def save(obj: models.Model, *, actor=None, request=None, m2m: dict[str, Iterable] | None = None) -> ConfigChange:
    """Create or change *obj* (and set its many-to-many fields from *m2m*), then send
    :data:`config_changed` with what changed. Validation is the caller's (forms)."""
    model = type(obj)
    registration(model)
    with transaction.atomic():
        creating = obj.pk is None or not model.objects.filter(pk=obj.pk).exists()
        before = None if creating else snapshot(model.objects.get(pk=obj.pk))
        obj.save()
        for name, values in (m2m or {}).items():
            getattr(obj, name).set(list(values))
        change = _change(CREATED if creating else CHANGED, obj, before, snapshot(obj), actor, request)
        if change:
            config_changed.send(sender=model, change=change)
    return change


def delete(obj: models.Model, *, actor=None, request=None) -> ConfigChange:
    model = type(obj)
    registration(model)
    with transaction.atomic():
        before = snapshot(obj)
        change = _change(DELETED, obj, before, None, actor, request)
        obj.delete()
        config_changed.send(sender=model, change=change)
    return change
