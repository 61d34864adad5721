"""Runs made before runs kept their key get a copy of it while it is still there.

A password-encrypted run's archive is encrypted to the key its snapshot names
(``config.job.age_recipient``). Where that is still the job's key, the run takes a copy of
the job's wrapped key (``Run.age_identity_wrapped``), so replacing the job's key later
loses nothing. Runs whose key was already replaced are left as they are (that key is
no longer in the database; the key file beside their archives still opens them).
"""

from django.db import migrations


def keep_run_keys(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    Run = apps.get_model("jobs", "Run")
    for job in Job.objects.filter(encryption="password").exclude(age_identity_wrapped="").exclude(age_recipient=""):
        Run.objects.filter(
            job_id=job.pk,
            age_identity_wrapped="",
            config__job__encryption="password",
            config__job__age_recipient=job.age_recipient,
        ).update(age_identity_wrapped=job.age_identity_wrapped)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0015_planning_exports"),
    ]

    operations = [
        migrations.RunPython(keep_run_keys, migrations.RunPython.noop, elidable=True),
    ]
