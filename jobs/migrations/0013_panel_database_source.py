"""The panel's own database is always a source (for disaster recovery of the panel):
create the "Panel database" Source if there is none, then let the database refuse a
second one. ``loaddemo`` finds it by kind and never makes another."""

from django.db import migrations, models

NAME = "Panel database"
SLUG = "panel-database"


def create_panel_source(apps, schema_editor):
    Source = apps.get_model("jobs", "Source")
    if Source.objects.filter(kind="panel_database").exists():
        return
    name, slug, n = NAME, SLUG, 2
    while Source.objects.filter(name=name).exists():
        name, n = f"{NAME} ({n})", n + 1
    n = 2
    while Source.objects.filter(slug=slug).exists():
        slug, n = f"{SLUG}-{n}", n + 1
    Source.objects.create(name=name, slug=slug, kind="panel_database", settings={}, secrets={})


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0012_restore_on_a_worker"),
    ]

    operations = [
        # Kept on reverse: jobs may use it, and a later migrate finds it again.
        migrations.RunPython(create_panel_source, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="source",
            constraint=models.UniqueConstraint(
                condition=models.Q(("kind", "panel_database")), fields=("kind",), name="one_panel_database_source"
            ),
        ),
    ]
