from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Backup jobs"

    def ready(self) -> None:
        from backupsite import configwrite
        from jobs.models import ExportDataset, Job, PlanningExport, Source

        configwrite.register(
            Job,
            exclude=["next_run_at", "alert_open", "stale_alerted_at", "last_drill_at"],
            secret_fields=["age_identity_wrapped", "trigger_token_encrypted", "ping_url"],
            labels={
                "age_identity_wrapped": "backup password (wrapped key)",
                "trigger_token_encrypted": "trigger URL",
                "ping_url": "ping URL",
            },
        )
        configwrite.register(
            Source,
            exclude=["size_bytes", "file_count", "size_measured_at"],
            labels={"secrets": "credentials"},
        )
        # The kinds of heavy work register with jobs.slots when their module is imported;
        # every process imports them all, so each claim counts every kind's holders (and
        # the dispatcher tick has the exports' hook).
        import jobs.exports.service
        import jobs.services  # noqa: F401

        configwrite.register(PlanningExport, exclude=["next_run_at"])
        configwrite.register(
            ExportDataset,
            labels={"file_name": "file name", "sheet_title": "sheet title", "sql": "SQL query"},
        )
