# syntax=docker/dockerfile:1
# backupsite: the panel (gunicorn), the Celery worker and Celery beat all run this image;
# docker-compose.yml picks the command. Settings come from the environment only.
#
# Two stages. "build" installs the pinned requirements into a virtualenv and collects the
# static files; the final image copies the virtualenv and the application from it and
# adds only the programs backupsite runs, so pip, its cache and the build's scratch files
# never reach it. The application runs as an unprivileged user; its code stays owned by
# root.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# pg_dump refuses to dump a server of a newer major version than its own, and Debian
# bookworm's postgresql-client is 15. The client comes from the PostgreSQL project's own
# repository (PGDG, apt.postgresql.org) instead, in this major version: it dumps servers
# up to this version (and back to 9.2). Keep it at least at the newest PostgreSQL server
# you back up, docker-compose.yml's included (tests/test_compose.py checks that one).
ARG POSTGRES_CLIENT_MAJOR=18

# --- build ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# The translations: gettext's msgfmt compiles locale/<lang>/LC_MESSAGES/django.po (the
# .mo files are not in the repository); the final image gets the .mo files, not gettext.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gettext \
    && for po in locale/*/LC_MESSAGES/django.po; do msgfmt --check -o "${po%.po}.mo" "$po" || exit 1; done \
    && rm -rf /var/lib/apt/lists/*

# collectstatic needs the settings to import: throw-away secrets generated for this RUN
# only (the settings refuse placeholders), and a scratch data dir so nothing lands in
# /data. The files go to /app/staticfiles (STATIC_ROOT of the final image), inside the
# image and outside the /data volume, so a new image always serves its own static files.
RUN DEBUG=0 \
    BACKUPSITE_ENV_FILE="" \
    BACKUPSITE_DATA_DIR=/tmp/build-data \
    STATIC_ROOT=/app/staticfiles \
    SECRET_KEY="build-only-$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    FIELD_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
    python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data \
    && chmod 0755 docker/entrypoint.sh \
    && python -m compileall -q /app

# --- the image -----------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG POSTGRES_CLIENT_MAJOR

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=backupsite.settings \
    BACKUPSITE_DATA_DIR=/data \
    BACKUPSITE_ENV_FILE="" \
    STATIC_ROOT=/app/staticfiles

# The programs backupsite shells out to: zstd + tar (archives), age (encryption),
# pg_dump/pg_restore (postgresql-client-N from PGDG: postgresql-common brings the
# repository's signing key and the script that adds it), mysqldump (mariadb-client).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-common \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends \
        age \
        mariadb-client \
        "postgresql-client-${POSTGRES_CLIENT_MAJOR}" \
        tar \
        zstd \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 backupsite \
    && useradd --system --uid 10001 --gid backupsite --create-home --home-dir /home/backupsite \
        --shell /usr/sbin/nologin backupsite

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app

# Database (SQLite only if DATABASE_URL is not set), archives, local backups, beat
# schedule. 0700 (a new volume copies it): only the application's user may open any of it.
RUN install -d -o backupsite -g backupsite -m 0700 /data
VOLUME ["/data"]

USER backupsite

EXPOSE 8000

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["gunicorn", "backupsite.wsgi:application", \
     "--bind", "0.0.0.0:8000", \
     "--workers", "2", "--threads", "4", \
     "--timeout", "120", "--graceful-timeout", "30", "--keep-alive", "5", \
     "--worker-tmp-dir", "/dev/shm", \
     "--access-logfile", "-"]
