from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BackupsiteConfig(AppConfig):
    name = "backupsite"
    verbose_name = "backupsite"

    def ready(self) -> None:
        from backupsite import checks  # noqa: F401  (registers the system checks)
        from backupsite.roles import ensure_roles

        post_migrate.connect(ensure_roles, dispatch_uid="backupsite.ensure_roles")
        post_migrate.connect(create_cache_table, dispatch_uid="backupsite.create_cache_table")


def create_cache_table(sender=None, using="default", **kwargs) -> None:
    """The database cache (rate limits on the embedded default) needs its table: made
    after every ``migrate`` (tests included), a no-op when it exists or with Redis.

    ``post_migrate`` is sent only for apps with models, so this app (which has none)
    never receives it: act on the jobs app, as ``ensure_roles`` does."""
    if sender is None or sender.label != "jobs":
        return
    from django.core.management import call_command

    call_command("createcachetable", database=using, verbosity=0)
