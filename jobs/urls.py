from django.urls import path

from jobs.views import dashboard, exports, jobs, restore, runs, sources, wizard

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
    path("runs/", runs.run_list, name="run_list"),
    path("runs/<int:pk>/", runs.run_detail, name="run_detail"),
    path("runs/<int:pk>/progress/", runs.run_progress, name="run_progress"),
    path("runs/<int:pk>/download/", runs.run_download, name="run_download"),
    path("runs/<int:pk>/manifest/", runs.run_download, {"what": "manifest"}, name="run_manifest"),
    path("runs/<int:pk>/cancel/", runs.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/keep/", runs.run_keep_forever, name="run_keep_forever"),
    path("runs/<int:pk>/delete/", runs.run_delete_backup, name="run_delete_backup"),
    path("runs/<int:pk>/verify/", restore.run_verify, name="run_verify"),
    path("runs/<int:pk>/restore/", restore.run_restore, name="run_restore"),
    path("sources/", sources.source_list, name="source_list"),
    path("sources/<int:pk>/", sources.source_detail, name="source_detail"),
    path("sources/<int:pk>/measure/", sources.source_measure, name="source_measure"),
    path("exports/", exports.export_list, name="exports"),
    path("exports/new/", exports.export_create, name="export_create"),
    path("exports/<int:pk>/", exports.export_detail, name="export_detail"),
    path("exports/<int:pk>/edit/", exports.export_edit, name="export_edit"),
    path("exports/<int:pk>/delete/", exports.export_delete, name="export_delete"),
    path("exports/<int:pk>/run/", exports.export_run_now, name="export_run_now"),
    path("exports/<int:pk>/preview/", exports.export_preview, name="export_preview"),
    path("exports/<int:pk>/test/", exports.export_test, name="export_test"),
    path("exports/runs/", exports.export_run_list, name="export_run_list"),
    path("exports/runs/<int:pk>/", exports.export_run_detail, name="export_run_detail"),
    path("exports/runs/<int:pk>/progress/", exports.export_run_progress, name="export_run_progress"),
    path("audit/", dashboard.coming_soon, {"page": "audit"}, name="audit"),
]
