from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BackupsiteConfig(AppConfig):
    name = "backupsite"
    verbose_name = "backupsite"

    def ready(self) -> None:
        from backupsite import checks  # noqa: F401  (registers the system checks)
        from backupsite.roles import ensure_roles

        post_migrate.connect(ensure_roles, dispatch_uid="backupsite.ensure_roles")
