# backupsite — the two commands a newcomer needs:
#   make run    set everything up and start the panel + worker on http://127.0.0.1:8000
#   make test   set up and run the test suite (SQLite, filesystem broker)
# and, for the production stack:
#   make test-postgres   the suite on PostgreSQL + Redis, started by the tests from the
#                        local binaries (= BACKUPSITE_TEST_STACK=postgres make test)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test test-postgres lint format messages compilemessages bench bench-destinations clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.deps-run: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.deps-dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.deps-run

# Development settings for `make run` (kept if it exists; see .env.example).
.env:
	printf '# Written by `make run`: development mode, secrets generated under var/.\nDEBUG=1\n# The demo may test destinations on this machine (127.0.0.1); never in production.\nBACKUPSITE_ALLOW_LOCAL_DESTINATIONS=1\n' > .env

# The translations (locale/<lang>/LC_MESSAGES/django.po) are compiled here, not committed:
# with GNU gettext's msgfmt when installed, else polib; the Docker image compiles them when
# built. The test settings need no .env or secrets (a throw-away data dir), so this works
# on a fresh clone before anything else is set up.
compilemessages: $(VENV)/.deps-run
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py compilemessages --verbosity 0

# After changing a user-visible text: extract every marked string into the catalogues
# (then translate the new entries; tests/test_i18n.py fails on any left untranslated).
messages: $(VENV)/.deps-run
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py makemessages -l de -l sv

run: $(VENV)/.deps-run .env compilemessages
	$(PY) manage.py migrate --noinput
	$(PY) manage.py loaddemo
	$(PY) manage.py bootstrapadmin
	@echo "backupsite: http://127.0.0.1:8000  (Ctrl-C stops the panel and the worker)"
	$(VENV)/bin/honcho -f Procfile.dev start

test: $(VENV)/.deps-dev compilemessages
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests marked stack_independent ran in `make test` and are left out here.
test-postgres: $(VENV)/.deps-dev compilemessages
	BACKUPSITE_TEST_STACK=postgres $(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.deps-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.deps-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.deps-dev
	$(PY) bench/archive.py
	$(PY) bench/dest_download.py

# Destinations against the stock tools (SFTP: a loopback sshd it starts; needs root).
bench-destinations: $(VENV)/.deps-dev
	$(PY) bench/destinations.py

clean-venv:
	rm -rf $(VENV)
