"""The Celery app: every piece of Celery configuration lives here.

Tasks carry primary keys only (JSON serializer only); the database row is the
truth. Long tasks are acknowledged late with a prefetch of one, so a worker that dies
hands its task back; time limits keep a stuck run from holding the slot forever.
"""

from __future__ import annotations

import os

from celery import Celery, bootsteps
from celery.signals import celeryd_after_setup
from kombu import Queue

from backupsite import logs

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backupsite.settings")

app = Celery("backupsite")


def configure(app: Celery) -> None:
    from django.conf import settings

    from backupsite.private import private_dir

    broker_options: dict = {}
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        folder = settings.DATA_DIR / "broker"
        queue_dir = folder / "queue"
        processed = folder / "processed"
        control = folder / "control"
        # 0700 folders. The message files inside follow the umask: kombu writes them
        # with a plain open() and offers no hook for their mode, so making them 0600
        # would mean replacing its transport. They hold task names and primary keys
        # only (never a secret), and nobody else can enter these folders.
        for path in (queue_dir, processed, control):
            private_dir(path)
        broker_options = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(processed),
            "control_folder": str(control),
            "store_processed": False,
        }
    else:
        # Redis re-delivers an unacknowledged message after the visibility timeout:
        # keep it above the hard time limit, so a long run is never executed twice, and
        # above the longest countdown (an upload's retry, an e-mail's), so a message
        # waiting for its time is never delivered a second time meanwhile.
        longest = max(settings.CELERY_HARD_TIME_LIMIT, settings.BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS, 3600)
        broker_options = {"visibility_timeout": longest + 3600}

    app.conf.update(
        broker_url=settings.CELERY_BROKER_URL,
        broker_transport_options=broker_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        # A task whose pool process died (SIGKILL, out of memory) is not handed back by
        # Celery (it would come back at once, and again): the database rows say what to
        # do (the reconcile restarts the run at most BACKUPSITE_RUN_RESTARTS times, the
        # sweep takes the upload back).
        task_reject_on_worker_lost=False,
        # Queues (jobs/enqueue.py): every worker consumes these, plus its own host.<name>
        # (added below); `celery worker -Q …` narrows them.
        task_default_queue="celery",
        task_queues=[Queue("celery"), Queue("archives"), Queue("exports")],
        task_create_missing_queues=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.CELERY_SOFT_TIME_LIMIT,
        task_time_limit=settings.CELERY_HARD_TIME_LIMIT,
        task_always_eager=settings.CELERY_TASK_ALWAYS_EAGER,
        task_eager_propagates=True,
        timezone=settings.TIME_ZONE,
        enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule_filename=str(settings.DATA_DIR / "celerybeat-schedule"),
        beat_scheduler="backupsite.beat:PrivateScheduler",  # the schedule file is 0600
        beat_schedule={
            # Reconcile the active runs (interrupted workers, lost hand-overs) often
            # enough that a killed run is marked interrupted within about
            # BACKUPSITE_STALE_RUN_SECONDS + this interval; a tick nobody ran in time
            # expires instead of piling up.
            "reap-stale-runs": {
                "task": "jobs.tasks.reap_stale_runs",
                "schedule": float(settings.BACKUPSITE_REAPER_SECONDS),
                "options": {"expires": float(settings.BACKUPSITE_REAPER_SECONDS)},
            },
            # Wizards left unfinished (a closed tab): their steps and encrypted secrets
            # leave the session table within the TTL plus this interval.
            # Audit events past BACKUPSITE_AUDIT_RETENTION_DAYS are pruned, and
            # "configuration changed" e-mails whose task was lost are sent again.
            "audit-housekeeping": {
                "task": "backupsite.tasks.audit_housekeeping",
                "schedule": 300.0,
                "options": {"expires": 300.0},
            },
            "purge-abandoned-wizards": {
                "task": "jobs.tasks.purge_abandoned_wizards",
                "schedule": 600.0,
                "options": {"expires": 600.0},
            },
            # Start the jobs and planning exports whose time has come (two beats never
            # start one twice: jobs/dispatch.py claims each with a conditional update).
            "dispatch-tick": {
                "task": "jobs.tasks.dispatch_tick",
                "schedule": float(settings.BACKUPSITE_DISPATCH_SECONDS),
                "options": {"expires": float(settings.BACKUPSITE_DISPATCH_SECONDS)},
            },
            # Uploads whose task was lost, or whose worker died, are handed over again.
            "sweep-uploads": {
                "task": "jobs.tasks.sweep_uploads",
                "schedule": float(settings.BACKUPSITE_SWEEP_SECONDS),
                "options": {"expires": float(settings.BACKUPSITE_SWEEP_SECONDS)},
            },
        },
    )


@celeryd_after_setup.connect
def _consume_own_host_queue(sender, instance, **kwargs) -> None:
    """Every worker also consumes the queue of its own host (``host.<BACKUPSITE_HOST>``):
    the uploads and local checks of the archives this machine wrote."""
    from django.conf import settings

    instance.app.amqp.queues.select_add(f"host.{settings.BACKUPSITE_HOST}")


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes this worker's heartbeat row (jobs/heartbeats.py) while it runs."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs) -> None:
        self.thread = None

    def start(self, worker) -> None:
        from jobs.heartbeats import WorkerHeartbeatThread

        queues = sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
        self.thread = WorkerHeartbeatThread(worker.hostname, queues)
        self.thread.start()

    def stop(self, worker) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None


app.steps["worker"].add(WorkerHeartbeat)


configure(app)
app.autodiscover_tasks()

# Every line logged during a run's task carries its id (backupsite/logs.py).
logs.connect_celery()
