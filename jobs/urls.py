from django.urls import path

from jobs.views import dashboard, jobs, restore, runs, sources

app_name = "jobs"

urlpatterns = [
    path("jobs/", jobs.job_list, name="job_list"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job_detail"),
    path("jobs/<int:pk>/run/", jobs.job_run_now, name="job_run_now"),
    path("runs/", runs.run_list, name="run_list"),
    path("runs/<int:pk>/", runs.run_detail, name="run_detail"),
    path("runs/<int:pk>/progress/", runs.run_progress, name="run_progress"),
    path("runs/<int:pk>/download/", runs.run_download, name="run_download"),
    path("runs/<int:pk>/manifest/", runs.run_download, {"what": "manifest"}, name="run_manifest"),
    path("runs/<int:pk>/cancel/", runs.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/verify/", restore.run_verify, name="run_verify"),
    path("runs/<int:pk>/restore/", restore.run_restore, name="run_restore"),
    path("restores/<int:pk>/", restore.restore_detail, name="restore_detail"),
    path("restores/<int:pk>/progress/", restore.restore_progress, name="restore_progress"),
    path("sources/", sources.source_list, name="source_list"),
    path("sources/new/", sources.source_create, name="source_create"),
    path("sources/<int:pk>/", sources.source_detail, name="source_detail"),
    path("sources/<int:pk>/edit/", sources.source_edit, name="source_edit"),
    path("sources/<int:pk>/test/", sources.source_test, name="source_test"),
    path("sources/<int:pk>/measure/", sources.source_measure, name="source_measure"),
    path("sources/<int:pk>/delete/", sources.source_delete, name="source_delete"),
    path("exports/", dashboard.coming_soon, {"page": "exports"}, name="exports"),
    path("audit/", dashboard.coming_soon, {"page": "audit"}, name="audit"),
]
