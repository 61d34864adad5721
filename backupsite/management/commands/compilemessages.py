"""``manage.py compilemessages`` over the panel's own catalogues only (``locale/``), with
the folders makemessages leaves out ignored too (not the virtualenv's packages). The
compiled ``.mo`` files are not committed: ``make run``, ``make test``, the test session
(tests/conftest.py) and the image build make them; a ``.mo`` newer than its ``.po`` is
left alone.

With GNU gettext's ``msgfmt`` installed (Debian: gettext) Django's command compiles them
(and checks them); without it, ``polib`` does (pure Python, the same ``.mo`` format), so
``make run`` works on a machine without gettext."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.core.management.commands import compilemessages

from backupsite.management.commands.makemessages import IGNORED


class Command(compilemessages.Command):
    def handle(self, **options):
        if shutil.which(self.program) is None:
            return self._compile_with_polib(options.get("verbosity", 1))
        options["ignore_patterns"] = [*(options.get("ignore_patterns") or []), *(p for p in IGNORED if p != "locale")]
        return super().handle(**options)

    def _compile_with_polib(self, verbosity: int) -> None:
        import polib

        for root in map(Path, settings.LOCALE_PATHS):
            for po in sorted(root.glob("*/LC_MESSAGES/*.po")):
                mo = po.with_suffix(".mo")
                if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
                    continue
                catalogue = polib.pofile(str(po))
                # Only translated, non-fuzzy entries go into the .mo (as msgfmt does).
                catalogue.save_as_mofile(str(mo))
                if verbosity > 0:
                    self.stdout.write(f"compiled {po} (polib: msgfmt is not installed)")
