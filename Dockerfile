# syntax=docker/dockerfile:1
# backupsite: the panel (gunicorn), the Celery worker and Celery beat all run this image;
# docker-compose.yml picks the command. Settings come from the environment only.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=backupsite.settings \
    BACKUPSITE_DATA_DIR=/data \
    BACKUPSITE_ENV_FILE="" \
    STATIC_ROOT=/app/staticfiles

# The programs backupsite shells out to: zstd + tar (archives), age (encryption),
# pg_dump/pg_restore (postgresql-client), mysqldump (mariadb-client).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        age \
        ca-certificates \
        mariadb-client \
        postgresql-client \
        tar \
        zstd \
    && rm -rf /var/lib/apt/lists/*

# The application runs as this unprivileged user; the code stays owned by root.
RUN groupadd --system --gid 10001 backupsite \
    && useradd --system --uid 10001 --gid backupsite --create-home --home-dir /home/backupsite \
        --shell /usr/sbin/nologin backupsite

WORKDIR /app

COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# collectstatic needs the settings to import: throw-away secrets generated for this RUN
# only (the settings refuse placeholders), and a scratch data dir so nothing lands in
# /data. The files go to STATIC_ROOT=/app/staticfiles, inside the image and outside the
# /data volume, so a new image always serves its own static files.
RUN chmod 0755 docker/entrypoint.sh \
    && DEBUG=0 \
       BACKUPSITE_DATA_DIR=/tmp/build-data \
       SECRET_KEY="build-only-$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
       FIELD_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
       python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data \
    && python -m compileall -q /app \
    && install -d -o backupsite -g backupsite -m 0700 /data

# Database (SQLite only if DATABASE_URL is not set), archives, local backups, beat schedule.
# 0700 (a new volume copies it): only the application's user may open any of it.
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
