"""Health check of the web container: does gunicorn answer with Django?

Asks for the login page over plain HTTP on 127.0.0.1:8000 with a Host header Django
accepts (the first ALLOWED_HOSTS entry, so no "Invalid HTTP_HOST" error is logged every
interval) and X-Forwarded-Proto: https (gunicorn trusts it from 127.0.0.1, so
SECURE_SSL_REDIRECT does not bounce the probe). Any answer below 500 is healthy: even a
redirect proves the application is loaded and serving; a 500 (e.g. database down) is not.
"""

from __future__ import annotations

import http.client
import os
import sys


def probe_host() -> str:
    for entry in os.environ.get("ALLOWED_HOSTS", "").split(","):
        entry = entry.strip()
        if not entry or entry == "*":
            continue
        # ".example.com" allows example.com and its subdomains.
        return entry.lstrip(".")
    return "localhost"


def main() -> int:
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


if __name__ == "__main__":
    sys.exit(main())
