from django.apps import AppConfig


class DestinationsConfig(AppConfig):
    name = "destinations"
    verbose_name = "Destinations"

    def ready(self) -> None:
        from backupsite import configwrite
        from destinations.models import Destination

        configwrite.register(
            Destination,
            exclude=["last_test_at", "last_test_ok", "last_test_message", "last_test_details", "status"],
            labels={"settings": "settings", "secrets": "credentials"},
        )
