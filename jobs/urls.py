from django.urls import path

from jobs.views import dashboard, jobs, restore, runs, sources, triggers, wizard

app_name = "jobs"

urlpatterns = [
    path("jobs/", jobs.job_list, name="job_list"),
    path("jobs/new/", wizard.JobWizard.as_view(), name="job_create"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job_detail"),
    path("jobs/<int:pk>/edit/", wizard.JobEditWizard.as_view(), name="job_edit"),
    path("jobs/<int:pk>/duplicate/", wizard.JobDuplicateWizard.as_view(), name="job_duplicate"),
    path("jobs/<int:pk>/delete/", jobs.job_delete, name="job_delete"),
    path("jobs/<int:pk>/enabled/", jobs.job_set_enabled, name="job_set_enabled"),
    path("jobs/<int:pk>/destinations/", jobs.job_destinations, name="job_destinations"),
    path("jobs/<int:pk>/run/", jobs.job_run_now, name="job_run_now"),
    path("jobs/<int:pk>/trigger/", triggers.job_trigger_show, name="job_trigger_show"),
    path("jobs/<int:pk>/trigger/regenerate/", triggers.job_trigger_regenerate, name="job_trigger_regenerate"),
    path("jobs/<int:pk>/trigger/remove/", triggers.job_trigger_remove, name="job_trigger_remove"),
    path("jobs/<int:pk>/test-email/", triggers.job_test_email, name="job_test_email"),
    path("jobs/<int:pk>/alerts/", triggers.job_alert_settings, name="job_alert_settings"),
    path("hooks/jobs/<int:pk>/", triggers.job_trigger, name="job_trigger"),
    path("hooks/jobs/<int:pk>/<str:token>/", triggers.job_trigger, name="job_trigger_token"),
    path("runs/", runs.run_list, name="run_list"),
    path("runs/<int:pk>/", runs.run_detail, name="run_detail"),
    path("runs/<int:pk>/progress/", runs.run_progress, name="run_progress"),
    path("runs/<int:pk>/download/", runs.run_download, name="run_download"),
    path("runs/<int:pk>/manifest/", runs.run_download, {"what": "manifest"}, name="run_manifest"),
    path("runs/<int:pk>/key/", runs.run_key_file, name="run_key_file"),
    path("runs/<int:pk>/cancel/", runs.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/keep/", runs.run_keep_forever, name="run_keep_forever"),
    path("runs/<int:pk>/delete/", runs.run_delete_backup, name="run_delete_backup"),
    path("runs/<int:pk>/verify/", restore.run_verify, name="run_verify"),
    path("runs/<int:pk>/restore/", restore.run_restore, name="run_restore"),
    path("sources/", sources.source_list, name="source_list"),
    path("sources/<int:pk>/", sources.source_detail, name="source_detail"),
    path("sources/<int:pk>/measure/", sources.source_measure, name="source_measure"),
    path("exports/", dashboard.coming_soon, {"page": "exports"}, name="exports"),
]
