"""``manage.py makemessages`` with this project's options, so every run (by hand, by
``make messages`` or by tests/test_i18n.py) writes the catalogues the same way:

* only the panel's code and templates (not the virtualenv, tests, benchmarks, docs);
* one line per message (``--no-wrap``) and file names without line numbers
  (``--add-location=file``): a change elsewhere in a file does not touch the catalogues,
  so the German and Swedish files stay easy to review and to merge;
* no obsolete entries (``--no-obsolete``): a text removed from the code leaves the files.

Usage: ``manage.py makemessages -l de -l sv``; translate the new (empty) and fuzzy
entries; ``manage.py compilemessages`` (``make run`` and ``make test`` do it).
"""

from __future__ import annotations

from django.core.management.commands import makemessages

IGNORED = [".venv", "var", "tests", "bench", "docs", "docker", "staticfiles", "locale", "*.egg-info"]


class Command(makemessages.Command):
    def handle(self, *args, **options):
        options["ignore_patterns"] = [*(options.get("ignore_patterns") or []), *IGNORED]
        options["no_wrap"] = True
        options["add_location"] = "file"
        options["no_location"] = False
        options["no_obsolete"] = True
        return super().handle(*args, **options)
