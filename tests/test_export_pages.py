"""The planning-export pages: administrators configure (through configwrite), operators
run, viewers see; Preview and Test connection; the run page and its progress fragment."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from backupsite import configwrite
from destinations.models import Destination
from jobs.exports import demo
from jobs.models import ExportDataset, ExportRun, PlanningExport, Source
from tests.conftest import grant_sudo


@pytest.fixture
def planning_source(db, tmp_path):
    today = timezone.localdate()
    path = demo.make_planning_database(tmp_path / "planning.sqlite3", today)
    return Source.objects.create(name="Planning DB", kind="sqlite", settings={"path": str(path)})


@pytest.fixture
def local(folders):
    return Destination.objects.create(name="Local disk", kind="local", settings={"path": str(folders["backups"])})


@pytest.fixture
def export(planning_source, local):
    export = PlanningExport(name="Nightly plan", source=planning_source, folder="plan")
    configwrite.save(export, m2m={"destinations": [local]})
    for position, dataset in enumerate(demo.DATASETS):
        ExportDataset.objects.create(export=export, position=position, **dataset)
    return export


def form_data(source, destinations, datasets, **overrides) -> dict:
    data = {
        "name": "Customer FTP",
        "source": str(source.pk),
        "window_days": "5",
        "window_offset_days": "0",
        "run_at": "02:00",
        "destinations": [str(d.pk) for d in destinations],
        "folder": "planning",
        "report_to": "desk@example.com",
        "enabled": "on",
        "datasets-TOTAL_FORMS": str(len(datasets)),
        "datasets-INITIAL_FORMS": "0",
        "datasets-MIN_NUM_FORMS": "1",
        "datasets-MAX_NUM_FORMS": "20",
        "action": "save",
    }
    for n, dataset in enumerate(datasets):
        for key, value in dataset.items():
            data[f"datasets-{n}-{key}"] = value
    data.update(overrides)
    return data


def no_inline_code(html: str) -> None:
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert " style=" not in html and "<style" not in html, "inline style"
    assert not re.search(r" on[a-z]+=", html), "inline event handler"


@pytest.mark.parametrize("user", ["alice", "bob", "charlie"])
def test_every_role_sees_the_list_the_details_and_the_runs(client, request, user, export):
    client.force_login(request.getfixturevalue(user))
    run = ExportRun.objects.create(export=export, export_name=export.name, state="succeeded")
    for url in (
        reverse("jobs:exports"),
        export.get_absolute_url(),
        reverse("jobs:export_run_list"),
        run.get_absolute_url(),
        reverse("jobs:export_run_progress", args=[run.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        no_inline_code(response.content.decode())
    page = client.get(export.get_absolute_url()).content.decode()
    assert "topics.xlsx" in page and "appointments.xlsx" in page
    assert ('id="run-now"' in page) == (user != "charlie")
    assert ('id="edit-export"' in page) == (user == "alice")


def test_a_user_without_a_role_sees_nothing(client, dave, export):
    client.force_login(dave)
    assert client.get(reverse("jobs:exports")).status_code == 403
    assert client.get(export.get_absolute_url()).status_code == 403


def test_the_empty_list_explains_what_an_export_is(client, alice, db):
    client.force_login(alice)
    page = client.get(reverse("jobs:exports")).content.decode()
    assert "No planning exports yet." in page and reverse("jobs:export_create") in page


@pytest.mark.parametrize(("user", "status"), [("bob", 403), ("charlie", 403)])
def test_only_administrators_create_edit_delete_preview_and_test(client, request, user, status, export):
    client.force_login(request.getfixturevalue(user))
    for url in (
        reverse("jobs:export_create"),
        reverse("jobs:export_edit", args=[export.pk]),
        reverse("jobs:export_delete", args=[export.pk]),
    ):
        assert client.get(url).status_code == status
    for name in ("export_preview", "export_test", "export_delete"):
        assert client.post(reverse(f"jobs:{name}", args=[export.pk])).status_code == status
    assert PlanningExport.objects.filter(pk=export.pk).exists()


@pytest.mark.parametrize(("user", "allowed"), [("alice", True), ("bob", True), ("charlie", False)])
def test_run_now_is_for_operators_and_administrators(
    client, request, user, allowed, export, django_capture_on_commit_callbacks
):
    client.force_login(request.getfixturevalue(user))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("jobs:export_run_now", args=[export.pk]))
    if not allowed:
        assert response.status_code == 403 and not ExportRun.objects.exists()
        return
    run = ExportRun.objects.get()
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.state == ExportRun.State.SUCCEEDED and run.created_by.username == user  # eager Celery in the tests
    page = client.get(run.get_absolute_url()).content.decode()
    assert "topics.xlsx" in page and "Succeeded" in page and 'data-poll-active="false"' in page


def test_creating_an_export_writes_through_configwrite(client, alice, planning_source, local):
    seen = []

    def receiver(sender, change, **kwargs):
        seen.append((change.model, change.action, change.object_repr))

    configwrite.config_changed.connect(receiver)
    try:
        client.force_login(alice)
        data = form_data(planning_source, [local], demo.DATASETS)
        response = client.post(reverse("jobs:export_create"), data)
    finally:
        configwrite.config_changed.disconnect(receiver)
    export = PlanningExport.objects.get(name="Customer FTP")
    assert response.status_code == 302 and response["Location"] == export.get_absolute_url()
    assert list(export.datasets.values_list("file_name", flat=True)) == ["topics.xlsx", "appointments.xlsx"]
    assert list(export.destinations.all()) == [local]
    assert export.next_run_at is not None
    assert ("jobs.planningexport", "created", "Customer FTP") in seen
    assert ("jobs.exportdataset", "created", "Customer FTP: topics.xlsx") in seen


def test_the_form_refuses_bad_sql_folders_and_duplicate_file_names(client, alice, planning_source, local):
    client.force_login(alice)
    datasets = [
        {"file_name": "a.xlsx", "sheet_title": "A", "sql": "DELETE FROM topics"},
        {"file_name": "a.xlsx", "sheet_title": "B", "sql": "SELECT 1"},
    ]
    response = client.post(reverse("jobs:export_create"), form_data(planning_source, [local], datasets, folder="../up"))
    page = response.content.decode()
    assert response.status_code == 200 and not PlanningExport.objects.exists()
    assert "starts with DELETE" in page
    assert "Each dataset needs its own file name." in page
    assert "“..” is not allowed" in page or "A folder under the destination" in page


def test_an_empty_form_asks_for_a_dataset_in_words(client, alice, planning_source, local):
    client.force_login(alice)
    response = client.post(reverse("jobs:export_create"), form_data(planning_source, [local], []))
    page = response.content.decode()
    assert response.status_code == 200 and not PlanningExport.objects.exists()
    assert "Add at least one dataset: a file name, a sheet title and a query." in page
    assert "Please submit at least" not in page
    # next to the datasets: inside the "Files" fieldset, before the first dataset form
    files = page.index("<legend>Files</legend>")
    assert files < page.index("Add at least one dataset") < page.index("<legend>Where to</legend>")


def test_destinations_are_a_labelled_list_of_checkboxes(client, alice, planning_source, local):
    client.force_login(alice)
    page = client.get(reverse("jobs:export_create")).content.decode()
    fieldset = re.search(r'<fieldset class="field" id="id_destinations".*?</fieldset>', page, re.S)
    assert fieldset, "the destinations are a fieldset of their own"
    html = fieldset.group(0)
    assert "<legend>Destinations</legend>" in html
    assert f'<div class="check-row"><input type="checkbox" name="destinations" value="{local.pk}"' in html
    assert '<label for="id_destinations_0">Local disk' in html


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        ("not an address", "“not an address” is not an e-mail address; separate several addresses with commas."),
        ("desk@example.com, not-an-address", "“not-an-address” is not an e-mail address"),
        ("desk@example.com\r\nBcc: evil@example.com", "“Bcc: evil@example.com” is not an e-mail address"),
    ],
)
def test_a_wrong_report_to_entry_is_named_as_typed(client, alice, planning_source, local, typed, shown):
    client.force_login(alice)
    response = client.post(
        reverse("jobs:export_create"), form_data(planning_source, [local], demo.DATASETS, report_to=typed)
    )
    assert response.status_code == 200 and not PlanningExport.objects.exists()
    assert shown in response.content.decode()


def test_report_to_still_takes_addresses_separated_by_commas_spaces_or_lines(db):
    from django.core.exceptions import ValidationError

    from backupsite.validators import split_addresses, validate_address_list

    for typed in ("a@example.com, b@example.com", "a@example.com b@example.com", "a@example.com\nb@example.com;"):
        validate_address_list(typed)
        assert split_addresses(typed) == ["a@example.com", "b@example.com"]
    with pytest.raises(ValidationError) as refused:
        validate_address_list("a@example.com, " + "x" * 200)
    assert len(refused.value.messages[0]) < 200 and "…" in refused.value.messages[0]  # a pasted paragraph is cut


def test_export_runs_page_links_keep_the_export_filter(client, charlie, export):
    for _ in range(30):
        ExportRun.objects.create(export=export, export_name=export.name, state="succeeded")
    client.force_login(charlie)
    page = client.get(reverse("jobs:export_run_list"), {"export": str(export.pk)}).content.decode()
    assert "Page 1 of 2" in page and f'href="?page=2&amp;export={export.pk}" rel="next"' in page


def test_e_mail_destinations_are_not_offered(client, alice, planning_source, local):
    mail_dest = Destination.objects.create(
        name="Mailbox", kind="email", settings={"to": "x@example.com", "host": "mail.example.com"}
    )
    client.force_login(alice)
    page = client.get(reverse("jobs:export_create")).content.decode()
    assert "Local disk" in page and "Mailbox" not in page
    response = client.post(reverse("jobs:export_create"), form_data(planning_source, [mail_dest], demo.DATASETS))
    assert response.status_code == 200 and not PlanningExport.objects.exists()


def test_preview_of_unsaved_queries_shows_rows_and_types(client, alice, planning_source, local):
    client.force_login(alice)
    datasets = [*demo.DATASETS, {"file_name": "bad.xlsx", "sheet_title": "Bad", "sql": "UPDATE topics SET title = 1"}]
    data = form_data(planning_source, [local], datasets, action="preview")
    response = client.post(reverse("jobs:export_create"), data)
    page = response.content.decode()
    assert response.status_code == 200 and not PlanningExport.objects.exists()
    assert 'id="preview-results"' in page
    assert "Thema / Ämne" in page and "Beginn / Start" in page
    assert "date" in page and "datetime" in page and "text" in page  # the column types
    assert "starts with UPDATE" in page
    assert 'value="Customer FTP"' in page  # what was typed stays


def test_preview_of_a_saved_export(client, alice, export):
    client.force_login(alice)
    page = client.post(reverse("jobs:export_preview", args=[export.pk])).content.decode()
    assert "Termin / Möte" in page and "read-only" in page


def test_test_connection_writes_into_the_folder_and_cleans_up(client, alice, export, folders):
    client.force_login(alice)
    response = client.post(reverse("jobs:export_test", args=[export.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "a test file was written and deleted" in page and str(folders["backups"] / "plan") in page
    assert list((folders["backups"] / "plan").iterdir()) == []


def test_test_connection_of_unsaved_settings_names_a_bad_folder(client, alice, planning_source, local):
    client.force_login(alice)
    data = form_data(planning_source, [local], demo.DATASETS, action="test", folder="a/../b")
    page = client.post(reverse("jobs:export_create"), data).content.decode()
    assert "is not allowed in the folder" in page or "A folder under the destination" in page
    data = form_data(planning_source, [local], demo.DATASETS, action="test")
    page = client.post(reverse("jobs:export_create"), data).content.decode()
    assert "a test file was written and deleted" in page


def test_editing_changes_and_removes_datasets(client, alice, export):
    client.force_login(alice)
    topics, appointments = export.datasets.all()
    data = form_data(
        export.source,
        export.destinations.all(),
        [
            {"id": str(topics.pk), "file_name": "themen.xlsx", "sheet_title": "Themen", "sql": topics.sql},
            {
                "id": str(appointments.pk),
                "file_name": appointments.file_name,
                "sheet_title": "T",
                "sql": "SELECT 1",
                "DELETE": "on",
            },
        ],
        name="Nightly plan",
        **{"datasets-INITIAL_FORMS": "2"},
    )
    response = client.post(reverse("jobs:export_edit", args=[export.pk]), data)
    assert response.status_code == 302
    assert list(export.datasets.values_list("file_name", flat=True)) == ["themen.xlsx"]


def test_delete_keeps_the_runs(client, alice, export):
    run = ExportRun.objects.create(export=export, export_name=export.name, state="succeeded")
    client.force_login(alice)
    assert client.get(reverse("jobs:export_delete", args=[export.pk])).status_code == 200
    response = client.post(reverse("jobs:export_delete", args=[export.pk]))
    assert response.status_code == 302 and not PlanningExport.objects.exists()
    run.refresh_from_db()
    assert run.export is None and run.export_name == "Nightly plan"


def test_a_running_export_is_not_deleted(client, alice, export):
    ExportRun.objects.create(export=export, export_name=export.name, state="running")
    client.force_login(alice)
    client.post(reverse("jobs:export_delete", args=[export.pk]))
    assert PlanningExport.objects.filter(pk=export.pk).exists()


def test_an_active_run_page_polls_its_progress(client, bob, export):
    run = ExportRun.objects.create(
        export=export,
        export_name=export.name,
        state="running",
        phase="query",
        datasets_total=2,
        current_file="topics.xlsx",
        rows_done=1234,
    )
    client.force_login(bob)
    page = client.get(reverse("jobs:export_run_progress", args=[run.pk])).content.decode()
    assert 'data-poll-active="true"' in page and "1,234" in page and "topics.xlsx" in page


def test_a_destination_an_export_writes_to_is_not_deleted(client, alice, export, local):
    client.force_login(alice)
    grant_sudo(client)  # deleting a destination needs sudo mode (tests/test_sudo.py)
    response = client.post(reverse("destinations:delete", args=[local.pk]))
    assert response.status_code == 409
    assert "Nightly plan" in response.content.decode()
    assert Destination.objects.filter(pk=local.pk).exists()


def test_creating_changing_and_deleting_an_export_is_audited_and_mailed_to_the_other_administrator(
    client, alice, bob, planning_source, local, django_capture_on_commit_callbacks
):
    """alice creates, changes and deletes an export on its pages → the audit log has each
    step, and erin (the other administrator) gets a mail naming it for each; alice (who
    made them) and bob (an operator) get none. The database's password (the Source's
    secret, which the export uses) is in none of them."""
    from django.contrib.auth.models import Group, User
    from django.core import mail

    from backupsite.models import AuditEvent
    from backupsite.roles import ADMINISTRATORS

    password = "planning-db-password-Zq81"
    planning_source.secrets = {"password": password}
    planning_source.save()
    erin = User.objects.create_user("erin", "erin@example.com", "erin-password")
    erin.groups.add(Group.objects.get(name=ADMINISTRATORS))
    client.force_login(alice)
    grant_sudo(client)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("jobs:export_create"), form_data(planning_source, [local], demo.DATASETS))
    assert response.status_code == 302
    export = PlanningExport.objects.get(name="Customer FTP")
    assert [m.to for m in mail.outbox] == [["erin@example.com"]]
    created = mail.outbox[0]
    assert created.subject == "[backupsite] alice made 3 configuration changes"  # the export and its 2 datasets
    assert "Customer FTP" in created.body and "alice" in created.body and password not in created.body
    assert "topics.xlsx" in created.body and f"http://127.0.0.1:8000{export.get_absolute_url()}" in created.body

    mail.outbox.clear()
    data = form_data(planning_source, [local], [], folder="nightly")
    data.update(_dataset_post(export))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("jobs:export_edit", args=[export.pk]), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert [m.to for m in mail.outbox] == [["erin@example.com"]]
    assert "folder: planning → nightly" in mail.outbox[0].body and password not in mail.outbox[0].body

    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("jobs:export_delete", args=[export.pk]))
    assert response.status_code == 302 and not PlanningExport.objects.filter(pk=export.pk).exists()
    assert [m.to for m in mail.outbox] == [["erin@example.com"]] and "Customer FTP" in mail.outbox[0].subject

    events = AuditEvent.objects.filter(object_type="jobs.planningexport", object_repr="Customer FTP")
    assert sorted(events.values_list("action", flat=True)) == ["changed", "created", "deleted"]
    assert all(e.actor_name == "alice" for e in events)
    for event in AuditEvent.objects.all():
        assert password not in str(event.details)


def _dataset_post(export) -> dict:
    """The datasets of a saved export as its edit form posts them back, unchanged."""
    datasets = list(export.datasets.all())
    data = {"datasets-TOTAL_FORMS": str(len(datasets)), "datasets-INITIAL_FORMS": str(len(datasets))}
    for n, dataset in enumerate(datasets):
        data[f"datasets-{n}-id"] = str(dataset.pk)
        for key in ("file_name", "sheet_title", "sql"):
            data[f"datasets-{n}-{key}"] = getattr(dataset, key)
    return data
