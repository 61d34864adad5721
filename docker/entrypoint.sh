#!/bin/sh
# Entrypoint of the backupsite image; web, worker and beat all start through it.
#
#   RUN_DEPLOY_CHECK=1  run `manage.py check --deploy --fail-level WARNING` first and
#                       refuse to start on any warning or error (bad secrets, empty
#                       ALLOWED_HOSTS, missing binaries, unwritable /data, ...).
#   RUN_MIGRATIONS=1    apply the database migrations before starting. Set it on ONE
#                       service only (web in docker-compose.yml), so two processes never
#                       migrate at the same time. migrate runs the database checks too and
#                       refuses on an error (backupsite.E005: pg_dump older than the server).
#
# Then the command (gunicorn or celery) replaces this shell, so it receives the signals.
set -eu

if [ "${RUN_DEPLOY_CHECK:-0}" = "1" ]; then
    python /app/manage.py check --deploy --fail-level WARNING
fi

if [ "${RUN_MIGRATIONS:-0}" = "1" ]; then
    python /app/manage.py migrate --noinput
fi

exec "$@"
