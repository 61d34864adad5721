from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BackupsiteConfig(AppConfig):
    name = "backupsite"
    verbose_name = "backupsite"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth import get_user_model
        from django.urls import reverse

        from backupsite import audit, checks, configwrite, languages  # noqa: F401  (registers the checks and receivers)
        from backupsite.roles import ensure_roles

        post_migrate.connect(ensure_roles, dispatch_uid="backupsite.ensure_roles")
        post_migrate.connect(create_cache_table, dispatch_uid="backupsite.create_cache_table")
        user_locked_out.connect(audit.locked_out, dispatch_uid="backupsite.audit.locked_out")
        # Users and their roles (group membership) change through configwrite, like any
        # configuration: audited, and e-mailed to the other administrators.
        configwrite.register(
            get_user_model(),
            exclude=["password", "last_login", "date_joined", "is_staff", "user_permissions"],
            labels={"groups": "role", "is_active": "active", "is_superuser": "superuser", "email": "e-mail address"},
            url=lambda user: reverse("users:edit", args=[user.pk]),
        )


def create_cache_table(sender=None, using="default", **kwargs) -> None:
    """The database cache (rate limits on the embedded default) needs its table: made
    after every ``migrate`` (tests included), a no-op when it exists or with Redis.

    ``post_migrate`` is sent only for apps with models, so this app (which has none)
    never receives it: act on the jobs app, as ``ensure_roles`` does."""
    if sender is None or sender.label != "jobs":
        return
    from django.core.management import call_command

    call_command("createcachetable", database=using, verbosity=0)
