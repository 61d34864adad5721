"""The three roles of backupsite, as Django groups with model permissions.

- administrators: configure everything (jobs, sources, destinations), run, download;
  they alone download, verify and restore *sensitive* runs (whose archive holds the
  panel's own database, with every password hash: ``jobs.access_sensitive_run``);
- operators: run jobs (sensitive ones too), download backups, view everything;
- viewers: view only.

Views check *permissions* (``PermissionRequiredMixin``), never group names, so a site
may build other groups from the same permissions. The groups are (re)built after every
``migrate``; running it again only adds missing permissions back.
"""

from __future__ import annotations

from django.contrib.auth.management import create_permissions
from django.contrib.auth.mixins import PermissionRequiredMixin
from django.utils.translation import gettext_lazy as _

ADMINISTRATORS = "administrators"
OPERATORS = "operators"
VIEWERS = "viewers"

_CONFIG_MODELS = ("jobs.source", "jobs.job", "destinations.destination")
_RECORD_MODELS = ("jobs.run", "jobs.upload")
_VIEW = [f"{m.split('.')[0]}.view_{m.split('.')[1]}" for m in _CONFIG_MODELS + _RECORD_MODELS]

_OPERATE = ["jobs.run_job", "jobs.download_run", "jobs.change_run"]  # change_run = cancel
_CONFIGURE = [
    f"{m.split('.')[0]}.{action}_{m.split('.')[1]}" for m in _CONFIG_MODELS for action in ("add", "change", "delete")
]

# The Users page and the audit log (administrators only).
_MANAGE_USERS = ["auth.view_user", "auth.add_user", "auth.change_user", "backupsite.view_auditevent"]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    VIEWERS: _VIEW,
    OPERATORS: [*_VIEW, *_OPERATE],
    ADMINISTRATORS: [
        *_VIEW,
        *_OPERATE,
        "jobs.delete_run",
        "jobs.access_sensitive_run",
        *_CONFIGURE,
        *_MANAGE_USERS,
    ],
}
ROLE_LABELS = {ADMINISTRATORS: _("Administrator"), OPERATORS: _("Operator"), VIEWERS: _("Viewer")}


def ensure_roles(sender=None, using="default", apps=None, **kwargs) -> None:
    """post_migrate handler: create the role groups with their permissions."""
    from django.apps import apps as global_apps
    from django.contrib.auth.models import Group, Permission

    # Sent once per app with models; act once, on the jobs app (whose permissions
    # the roles use), after creating every app's permissions ourselves.
    if sender is not None and sender.label != "jobs":
        return
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using)
    for role, perms in ROLE_PERMISSIONS.items():
        group, _created = Group.objects.using(using).get_or_create(name=role)
        wanted = []
        for perm in perms:
            app_label, codename = perm.split(".")
            wanted.append(Permission.objects.using(using).get(content_type__app_label=app_label, codename=codename))
        group.permissions.add(*wanted)


def role_of(user) -> str | None:
    """The highest role of *user*, or None (logged in but without any role)."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return ADMINISTRATORS
    names = {g.name for g in user.groups.all()}
    for role in (ADMINISTRATORS, OPERATORS, VIEWERS):
        if role in names:
            return role
    return None


def administrators_q(prefix: str = ""):
    """A filter on users with the administrator role (a superuser, or in the group)."""
    from django.db.models import Q

    return Q(**{f"{prefix}is_superuser": True}) | Q(**{f"{prefix}groups__name": ADMINISTRATORS})


def administrators():
    """The active administrators (those the "configuration changed" e-mail goes to, and
    of whom at least one must remain)."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    ids = User.objects.filter(administrators_q(), is_active=True).values("pk")
    return User.objects.filter(pk__in=ids)


def role_of_many(users) -> dict[int, str | None]:
    """:func:`role_of` for many users in one query (the Users page)."""
    from django.contrib.auth.models import Group

    names: dict[int, set[str]] = {}
    for user_id, name in Group.user_set.through.objects.filter(user__in=users).values_list("user_id", "group__name"):
        names.setdefault(user_id, set()).add(name)
    roles = {}
    for user in users:
        held = names.get(user.pk, set())
        roles[user.pk] = (
            ADMINISTRATORS
            if user.is_superuser
            else next((role for role in (ADMINISTRATORS, OPERATORS, VIEWERS) if role in held), None)
        )
    return roles


class RolePermissionMixin(PermissionRequiredMixin):
    """Login is enforced globally by LoginRequiredMiddleware; this adds the
    permission check and answers 403 (never a redirect loop) to a logged-in user."""

    raise_exception = True


def roles_context(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    role = role_of(user)
    return {
        "user_role": role,
        "user_role_label": ROLE_LABELS.get(role, _("No role")),
        "can_configure": user.has_perm("jobs.change_job"),
        "can_run": user.has_perm("jobs.run_job"),
        "can_download": user.has_perm("jobs.download_run"),
        "can_manage_users": user.has_perm("auth.change_user"),
        "can_view_audit": user.has_perm("backupsite.view_auditevent"),
    }
