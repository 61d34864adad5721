"""German and Swedish: the catalogues are complete, a user's language is saved and used
(else the browser's), e-mails are in their recipient's language (a job's for its alerts,
a user's for theirs), and in a real browser the language selector turns the wizard German
and then Swedish.

Completeness is checked on a fresh extraction: ``manage.py makemessages`` (the project's
command, the same options as ``make messages``) writes into a copy of ``locale/``, so a
text marked in the code or a template but missing from a catalogue fails here even if
nobody ran makemessages. The Swedish catalogue is written on its own branch (o-sv): until
it is merged, the Swedish half of those tests is an expected failure (``xfail``,
non-strict, only while the committed Swedish file still has untranslated entries).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import polib
import pytest
from django.core import mail
from django.core.management import call_command
from django.urls import reverse
from django.utils import translation

from backupsite.models import UserProfile
from jobs import services
from jobs.models import Notification, Run
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]
LOCALE = ROOT / "locale"
LANGUAGES = ("de", "sv")


def catalogue(lang: str, root: Path = LOCALE) -> polib.POFile:
    return polib.pofile(str(root / lang / "LC_MESSAGES" / "django.po"))


def _incomplete(lang: str) -> bool:
    po = catalogue(lang)
    return any(not entry.translated() or "fuzzy" in entry.flags for entry in po)


SV_PENDING = _incomplete("sv")
SWEDISH = pytest.param(
    "sv",
    marks=pytest.mark.xfail(
        SV_PENDING, reason="the Swedish catalogue comes from branch o-sv (not merged here yet)", strict=False
    ),
)


def translated(lang: str, msgid: str, context: str | None = None) -> str:
    """The committed catalogue's translation of *msgid* ("" when there is none yet)."""
    for entry in catalogue(lang):
        if entry.msgid == msgid and entry.msgctxt == context and "fuzzy" not in entry.flags:
            return entry.msgstr
    return ""


# --- (a) the catalogues ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fresh_catalogues(tmp_path_factory):
    """``makemessages -l de -l sv`` into a copy of ``locale/``: what the code marks now,
    merged with what the catalogues hold.

    It runs in a tree of links to the checkout's files whose ``locale`` is the copy:
    makemessages writes into the ``locale`` folder of the directory it runs in, so run in
    the checkout it rewrote the real catalogues and left the copy as it was."""
    require_binary("xgettext")
    require_binary("msgmerge")
    import os

    from django.conf import settings

    tree = tmp_path_factory.mktemp("tree")
    copy = tree / "locale"
    shutil.copytree(LOCALE, copy, ignore=shutil.ignore_patterns("*.mo"))
    for entry in ROOT.iterdir():
        if entry.name != "locale" and not entry.name.startswith("."):
            (tree / entry.name).symlink_to(entry)
    original_paths, cwd = settings.LOCALE_PATHS, Path.cwd()
    settings.LOCALE_PATHS = [copy]
    try:
        os.chdir(tree)
        call_command("makemessages", locale=list(LANGUAGES), verbosity=0, symlinks=True)
    finally:
        os.chdir(cwd)
        settings.LOCALE_PATHS = original_paths
    return copy


def test_the_fresh_extraction_finds_the_texts_of_the_code_templates_and_emails(fresh_catalogues):
    ids = {entry.msgid for entry in catalogue("de", fresh_catalogues)}
    assert len(ids) > 800
    # one of each: a template, an e-mail template, a form, a view's message, a model's choices
    for msgid in (
        "Restore with stock tools",
        'The backup job "%(name)s" did not complete.',
        "Language of the alert e-mails",
        "Backup of “%(name)s” queued.",
        "Partially succeeded",
    ):
        assert msgid in ids, msgid


@pytest.mark.parametrize("lang", ["de", SWEDISH])
def test_every_message_is_translated_and_none_is_fuzzy(fresh_catalogues, lang):
    po = catalogue(lang, fresh_catalogues)
    untranslated = [entry.msgid for entry in po.untranslated_entries()]
    fuzzy = [entry.msgid for entry in po.fuzzy_entries()]
    assert not untranslated, f"{len(untranslated)} untranslated in {lang}: {untranslated[:20]}"
    assert not fuzzy, f"{len(fuzzy)} fuzzy in {lang}: {fuzzy[:20]}"


PLACEHOLDER = re.compile(r"%\((\w+)\)[sdr]|%%|\{\{\s*\w+\s*\}\}")
TAG = re.compile(r"</?[a-z]+[^>]*>")


def _placeholders(text: str) -> list[str]:
    return sorted(match.group(0) for match in PLACEHOLDER.finditer(text))


def _problems(entry) -> list[str]:
    """Placeholders (``%(name)s``, ``%%``) and HTML tags must be the same in a
    translation as in the English text (the singular form may leave out the count)."""
    problems = []
    forms = (
        [(entry.msgid, entry.msgstr)]
        if not entry.msgid_plural
        else [(entry.msgid, entry.msgstr_plural.get(0, "")), (entry.msgid_plural, entry.msgstr_plural.get(1, ""))]
        + [(entry.msgid_plural, text) for index, text in sorted(entry.msgstr_plural.items()) if index > 1]
    )
    for index, (english, text) in enumerate(forms):
        if not text:
            continue
        wanted, got = _placeholders(english), _placeholders(text)
        plural = _placeholders(entry.msgid_plural) if entry.msgid_plural else []
        singular_without_count = bool(plural) and index == 0 and set(got) <= set(plural)
        if got != wanted and not singular_without_count:
            problems.append(f"{english!r}: placeholders {wanted} but {got} in {text!r}")
        if sorted(TAG.findall(english)) != sorted(TAG.findall(text)):
            problems.append(f"{english!r}: HTML tags differ in {text!r}")
    return problems


@pytest.mark.parametrize("lang", ["de", "sv"])
def test_translations_keep_every_placeholder_and_tag(lang):
    problems = [problem for entry in catalogue(lang) for problem in _problems(entry)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_catalogues_compile_with_msgfmt_check(lang, tmp_path):
    """msgfmt --check: the header (plural forms) and every python-format string."""
    import subprocess

    require_binary("msgfmt")
    po = LOCALE / lang / "LC_MESSAGES" / "django.po"
    result = subprocess.run(
        ["msgfmt", "--check", "-o", str(tmp_path / "django.mo"), str(po)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert catalogue(lang).metadata["Language"] == lang
    assert catalogue(lang).metadata["Plural-Forms"] == "nplurals=2; plural=(n != 1);"


def test_the_placeholder_check_catches_a_lost_or_renamed_placeholder():
    entry = polib.POEntry(msgid="Backup of “%(name)s” queued.", msgstr="Sicherung von „%(job)s“ eingereiht.")
    assert _problems(entry)
    entry.msgstr = "Sicherung von „%(name)s“ eingereiht."
    assert not _problems(entry)
    entry = polib.POEntry(msgid="Only <code>zstd</code>", msgstr="Nur zstd")
    assert _problems(entry)


# --- (b) the user's language ------------------------------------------------------------------
@pytest.fixture
def german_catalogue():
    require_binary("msgfmt")  # the session compiled the catalogues with it (tests/conftest.py)


def test_without_a_choice_the_browser_language_is_used(client, alice, german_catalogue):
    client.force_login(alice)
    page = client.get(reverse("dashboard"), HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9,en;q=0.5")
    assert page["Content-Language"] == "de"
    html = page.content.decode()
    assert '<html lang="de">' in html and ">Übersicht</a>" in html and ">Sicherungsaufträge</a>" in html
    english = client.get(reverse("dashboard"), HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9")
    assert english["Content-Language"] == "en" and ">Dashboard</a>" in english.content.decode()


def test_kind_names_descriptions_and_capabilities_are_translated(client, alice, german_catalogue, folders):
    """The destination and source kinds' names and descriptions, and what a kind can do,
    were English on German and Swedish pages."""
    from destinations.models import Destination

    client.force_login(alice)
    german = {"HTTP_ACCEPT_LANGUAGE": "de"}
    create = client.get(reverse("destinations:create"), **german).content.decode()
    assert "Festplatte des Servers" in create and "Windows-Freigabe" in create and "USB-Speicher" in create
    assert "Ein Ordner auf den Festplatten dieses Servers" in create and ">Name</label>" in create
    assert "Server hard drive" not in create
    sources = client.get(reverse("jobs:source_create"), **german).content.decode()
    assert "Verzeichnis" in sources and "PostgreSQL-Datenbank" in sources
    destination = Destination.objects.create(name="NAS", kind="local", settings={"path": str(folders["backups"])})
    detail = client.get(destination.get_absolute_url(), HTTP_ACCEPT_LANGUAGE="sv").content.decode()
    assert "läsa tillbaka filer" in detail and "Serverns hårddisk" in detail
    english = client.get(destination.get_absolute_url(), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "read files back" in english and "Server hard drive" in english


def test_the_destination_lists_last_upload_state_is_translated(client, alice, finished_run, german_catalogue):
    """The list showed the stored value, capitalised ("Succeeded" on German pages)."""
    client.force_login(alice)
    page = client.get(reverse("destinations:list"), HTTP_ACCEPT_LANGUAGE="de").content.decode()
    cell = page[page.index("state-succeeded") :].split("</td>")[0]
    assert ">Erfolgreich</span>" in cell and reverse("jobs:run_detail", args=[finished_run.pk]) in cell
    assert "Succeeded" not in page


def test_the_wizards_measured_sizes_read_well_in_german_and_swedish(german_catalogue):
    """The measured age comes from naturaltime, which already says "vor 2 Stunden" /
    "2 timmar sedan": the German text said "gemessen vor vor 2 Stunden"."""
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import Source
    from jobs.wizard.forms import SourceRow

    source = Source(
        name="Files", kind="directory", size_bytes=2048, size_measured_at=timezone.now() - timedelta(hours=2)
    )
    row = SourceRow(source, False, "/srv", "id_0")
    with translation.override("de"):
        assert row.size_text().replace("\xa0", " ") == "2,0 KB, gemessen vor 2 Stunden"
    with translation.override("sv"):
        assert row.size_text().replace("\xa0", " ") == "2,0 kB, mätt 2 timmar sedan"


def test_the_users_choice_is_saved_and_wins_over_the_browser(client, alice, german_catalogue):
    client.force_login(alice)
    response = client.post(reverse("set_language"), {"language": "de", "next": reverse("jobs:run_list")})
    assert response.status_code == 302 and response["Location"] == reverse("jobs:run_list")
    assert UserProfile.objects.get(user=alice).language == "de"
    client.cookies.clear()  # the saved choice, not the cookie, decides for a signed-in user
    client.force_login(alice)
    page = client.get(reverse("jobs:run_list"), HTTP_ACCEPT_LANGUAGE="sv")
    assert page["Content-Language"] == "de" and "<h1>Läufe</h1>" in page.content.decode()
    client.post(reverse("set_language"), {"language": "sv"})
    assert UserProfile.objects.get(user=alice).language == "sv"
    assert client.get(reverse("dashboard"), HTTP_ACCEPT_LANGUAGE="de")["Content-Language"] == "sv"
    # back to the browser's language
    client.post(reverse("set_language"), {"language": ""})
    assert UserProfile.objects.get(user=alice).language == ""
    assert client.get(reverse("dashboard"), HTTP_ACCEPT_LANGUAGE="de")["Content-Language"] == "de"


def test_the_selector_refuses_an_unknown_language_and_a_foreign_next(client, alice):
    client.force_login(alice)
    response = client.post(reverse("set_language"), {"language": "xx", "next": "https://evil.example/"})
    assert response["Location"] == reverse("dashboard")
    assert UserProfile.objects.get(user=alice).language == ""
    assert client.get(reverse("set_language")).status_code == 405


def test_the_login_page_follows_the_cookie_the_selector_sets(client, german_catalogue):
    client.post(reverse("set_language"), {"language": "de", "next": reverse("login")})
    page = client.get(reverse("login"), HTTP_ACCEPT_LANGUAGE="en")
    assert page["Content-Language"] == "de" and "Passwort vergessen?" in page.content.decode()


def test_sizes_numbers_and_dates_follow_the_language(client, alice, finished_run, german_catalogue):
    Run.objects.filter(pk=finished_run.pk).update(archive_size=1_572_864, file_count=12345)
    client.force_login(alice)
    german = client.get(finished_run.get_absolute_url(), HTTP_ACCEPT_LANGUAGE="de").content.decode()
    english = client.get(finished_run.get_absolute_url(), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "1,5\xa0MB" in german and "12.345 Dateien" in german
    assert "1.5\xa0MB" in english and "12,345 files" in english
    from django.utils.formats import date_format
    from django.utils.timezone import localtime

    when = localtime(finished_run.created_at)
    with translation.override("de"):
        queued_de = date_format(when, "DATETIME_FORMAT")  # "2. Dezember 2026 00:50"
    with translation.override("en"):
        queued_en = date_format(when, "DATETIME_FORMAT")  # "Dec. 2, 2026, 12:50 a.m."
    assert queued_de != queued_en
    assert f"<dd>{queued_de}</dd>" in german and f"<dd>{queued_en}</dd>" in english


def test_a_job_page_and_the_alert_settings_choose_the_alert_language(client, alice, job):
    client.force_login(alice)
    assert job.language == "en"  # LANGUAGE_CODE
    response = client.post(
        reverse("jobs:job_alert_settings", args=[job.pk]), {"language": "de", "drill_interval_days": "7"}
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.language == "de"


# --- (c) e-mails in their recipient's language -----------------------------------------------
def _failed_run(job, folders) -> Run:
    source = job.sources.get()
    source.settings = {"path": str(folders["root"] / "gone")}
    source.save()
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    return run


def test_a_failure_email_is_in_the_jobs_language_german(job, folders, german_catalogue):
    job.language = "de"
    job.save()
    run = _failed_run(job, folders)
    notification = Notification.objects.get(run=run, kind="run_failed")
    assert notification.subject == "[backupsite] Sicherung fehlgeschlagen: Office backup"
    assert "Der Sicherungsauftrag „Office backup“ wurde nicht abgeschlossen." in notification.body
    assert "Phase: Sammeln" in notification.body and "Hier liegen die Sicherungen" in notification.body
    assert [message.subject for message in mail.outbox] == [notification.subject]
    # the panel itself stays in the language of whoever looks at it
    assert translation.get_language() in ("en", "en-us")


@pytest.mark.parametrize("lang", [SWEDISH])
def test_a_failure_email_is_in_the_jobs_language_swedish(job, folders, lang, german_catalogue):
    job.language = lang
    job.save()
    run = _failed_run(job, folders)
    body = Notification.objects.get(run=run, kind="run_failed").body
    phrase = translated(lang, 'The backup job "%(name)s" did not complete.')
    assert phrase, "no Swedish translation of the failure e-mail's first line"
    assert phrase % {"name": "Office backup"} in body


def test_a_one_off_runs_alerts_use_the_language_in_its_snapshot(job, folders, german_catalogue):
    job.language = "de"
    job.save()
    run = services.create_run(job)
    assert run.config["job"]["language"] == "de"
    from jobs.notifications import alert_language

    assert alert_language(None, run) == "de"
    run.config["job"]["language"] = "xx"
    assert alert_language(None, run) == "en"


def test_invitations_and_change_emails_are_in_each_recipients_language(
    alice, german_catalogue, django_capture_on_commit_callbacks
):
    from django.contrib.auth.models import Group, User
    from django.test import RequestFactory

    from backupsite import configwrite
    from backupsite.models import AdminMail, AuditEvent
    from backupsite.roles import ADMINISTRATORS
    from backupsite.users import INVITATION, send_password_link
    from jobs.models import Source

    erik = User.objects.create_user("erik", "erik@example.com", "erik-password")
    erik.groups.add(Group.objects.get(name=ADMINISTRATORS))
    UserProfile.objects.create(user=erik, language="de")
    request = RequestFactory().post("/")
    request.user = alice
    send_password_link(erik, request=request, kind=INVITATION)
    [invitation] = mail.outbox
    assert invitation.subject == "[backupsite] Sie sind zu backupsite eingeladen"
    assert "Wählen Sie hier Ihr Passwort:" in invitation.body
    # alice (no choice of her own) adds a source: erik's change e-mail is German, and it
    # names the kind of object in German although the event stored it in LANGUAGE_CODE
    with django_capture_on_commit_callbacks(execute=True):
        configwrite.save(Source(name="Mail archive", kind="directory", settings={"path": "/srv/mail"}), actor=alice)
    change = AdminMail.objects.get(recipient=erik)
    assert change.subject == "[backupsite] alice erstellte Quelle “Mail archive”"
    assert "hat die Sicherungskonfiguration am" in change.body
    event = AuditEvent.objects.get(object_repr="Mail archive")
    assert event.object_label == "source"
    with translation.override("de"):
        assert event.object_label_display == "Quelle"


# --- (d) in a real browser ----------------------------------------------------------------------
@pytest.mark.slow
def test_the_selector_turns_the_wizard_and_an_alert_email_german_then_swedish(tmp_path):
    """One browser session: the footer's Language selector → Deutsch: the wizard's step 1
    is German; the job page's alert settings → German alert e-mails, and the test e-mail
    is German; then the same with Svenska. (The Swedish texts are read from the Swedish
    catalogue: until branch o-sv is merged, only the page language is checked for them.)"""
    from tests.browser import User, launch_chromium, start_panel

    sv_step = translated("sv", "1. General")
    sv_mail = translated("sv", 'This is a test e-mail for the backup job "%(name)s", sent by %(who)s.')
    with start_panel(tmp_path / "var") as stack, launch_chromium() as browser:
        context = browser.new_context(locale="en-US", viewport={"width": 1200, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        user = User(page, stack, "language", artifacts=ROOT / "tests" / "artifacts" / "i18n")
        user.login()
        mails = stack.data / "mail"

        def choose(label: str) -> None:
            page.select_option("#language-select", label=label)
            user.click("footer.footer button[type=submit]")
            page.wait_for_load_state()

        def send_test_email(language_label: str) -> str:
            page.goto(stack.base + "/jobs/")
            page.click("main a:text-is('Demo backup')")
            page.select_option("#alert-settings select[name=language]", label=language_label)
            page.click("#alert-settings button[type=submit]")
            page.wait_for_load_state()
            before = set(mails.glob("*")) if mails.exists() else set()
            page.click("form[action$='/test-email/'] button[type=submit]")
            page.wait_for_load_state()
            import time

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                new = (set(mails.glob("*")) if mails.exists() else set()) - before
                if new:
                    return "\n".join(p.read_text(errors="replace") for p in sorted(new))
                time.sleep(0.3)
            pytest.fail("no test e-mail arrived:\n" + stack.log("worker.log"))

        choose("Deutsch")
        assert page.get_attribute("html", "lang") == "de"
        page.goto(stack.base + "/jobs/new/")
        assert page.inner_text("main h2") == "1. Allgemein"
        assert page.inner_text("label[for=id_general-language]") == "Sprache der Benachrichtigungs-E-Mails"
        user.shot("wizard-de")
        german = send_test_email("Deutsch")
        assert "Dies ist eine Test-E-Mail für den Sicherungsauftrag „Demo backup“, gesendet von admin." in german

        choose("Svenska")
        assert page.get_attribute("html", "lang") == "sv"
        page.goto(stack.base + "/jobs/new/")
        assert page.inner_text("main h2") == (sv_step or "1. General")
        user.shot("wizard-sv")
        swedish = send_test_email("Svenska")
        expected = (sv_mail or 'This is a test e-mail for the backup job "%(name)s", sent by %(who)s.') % {
            "name": "Demo backup",
            "who": "admin",
        }
        assert expected in swedish
        assert not user.errors, user.errors
        context.close()


@pytest.mark.parametrize("language", ["de", "sv"])
def test_without_msgfmt_polib_compiles_the_same_catalogue(tmp_path, language):
    """make run on a machine without GNU gettext: compilemessages falls back to polib,
    whose .mo holds exactly what msgfmt's does (contexts and plurals included)."""
    import gettext
    import shutil
    import subprocess

    import polib
    from django.conf import settings

    msgfmt = shutil.which("msgfmt")
    if msgfmt is None:
        pytest.skip("msgfmt (GNU gettext) is not installed")
    po = Path(settings.LOCALE_PATHS[0]) / language / "LC_MESSAGES" / "django.po"
    polib.pofile(str(po)).save_as_mofile(str(tmp_path / "polib.mo"))
    subprocess.run([msgfmt, "-o", str(tmp_path / "msgfmt.mo"), str(po)], check=True)
    catalogues = []
    for name in ("polib.mo", "msgfmt.mo"):
        with open(tmp_path / name, "rb") as fh:
            catalogue = dict(gettext.GNUTranslations(fh)._catalog)
        catalogue.pop("", None)  # the header: the same fields, laid out by each tool its own way
        catalogues.append(catalogue)
    assert len(catalogues[0]) > 900 and catalogues[0] == catalogues[1]
