"""``manage.py compilemessages`` over the panel's own catalogues only (``locale/``), with
the folders makemessages leaves out ignored too (not the virtualenv's packages). The
compiled ``.mo`` files are not committed: ``make run``, ``make test``, the test session
(tests/conftest.py) and the image build make them; a ``.mo`` newer than its ``.po`` is
left alone. Needs GNU gettext's ``msgfmt`` (Debian: gettext)."""

from __future__ import annotations

from django.core.management.commands import compilemessages

from backupsite.management.commands.makemessages import IGNORED


class Command(compilemessages.Command):
    def handle(self, **options):
        options["ignore_patterns"] = [*(options.get("ignore_patterns") or []), *(p for p in IGNORED if p != "locale")]
        return super().handle(**options)
