"""Health checks of the containers (docker-compose.yml), without importing Django.

``healthcheck.py`` (web): does gunicorn answer with Django? Asks for the login page over
plain HTTP on 127.0.0.1:8000 with a Host header Django accepts (the first ALLOWED_HOSTS
entry, so no "Invalid HTTP_HOST" error is logged every interval) and X-Forwarded-Proto:
https (gunicorn trusts it from 127.0.0.1, so SECURE_SSL_REDIRECT does not bounce the
probe). Any answer below 500 is healthy: even a redirect proves the application is
loaded and serving; a 500 (e.g. database down) is not.

``healthcheck.py beat SCHEDULE_FILE`` (beat): is the scheduler ticking? Celery beat runs
backupsite.beat.PrivateScheduler, which touches ``SCHEDULE_FILE.alive`` on every tick and
ticks at least every 30 s (``PrivateScheduler.max_interval``): older than
``BEAT_MAX_AGE`` seconds, beat hangs or is gone.
"""

from __future__ import annotations

import http.client
import os
import sys
import time

BEAT_MAX_AGE = 120  # seconds: four of the scheduler's longest sleeps


def probe_host() -> str:
    for entry in os.environ.get("ALLOWED_HOSTS", "").split(","):
        entry = entry.strip()
        if not entry or entry == "*":
            continue
        # ".example.com" allows example.com and its subdomains.
        return entry.lstrip(".")
    return "localhost"


def web() -> int:
    port = int(os.environ.get("HEALTHCHECK_PORT", "8000"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "GET",
            "/accounts/login/",
            headers={"Host": probe_host(), "X-Forwarded-Proto": "https", "User-Agent": "backupsite-healthcheck"},
        )
        status = connection.getresponse().status
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if status >= 500:
        print(f"unhealthy: HTTP {status}", file=sys.stderr)
        return 1
    return 0


def beat(schedule_file: str, now: float | None = None) -> int:
    alive = schedule_file + ".alive"
    try:
        age = (time.time() if now is None else now) - os.stat(alive).st_mtime
    except OSError as exc:
        print(f"unhealthy: beat has not ticked yet ({alive}: {exc.strerror})", file=sys.stderr)
        return 1
    if age > BEAT_MAX_AGE:
        print(f"unhealthy: beat's last tick was {int(age)} s ago (limit {BEAT_MAX_AGE} s)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["beat"]:
        if len(argv) != 2:
            print("usage: healthcheck.py beat SCHEDULE_FILE", file=sys.stderr)
            return 2
        return beat(argv[1])
    return web()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
