"""One rate limiter for the whole panel: test-connection, password-reset e-mails, trigger
URLs (login throttling is django-axes', with the same client address).

Counts live in Django's cache (``CACHES["default"]``): the database cache on the
embedded default, Redis in production, so every web process counts together. A fixed
window per (scope, key): at most *limit* hits per *window* seconds.

    from backupsite.ratelimit import RateLimited, hit
    try:
        hit("destination-test", f"user:{request.user.pk}", limit=10, window=60)
    except RateLimited as exc:
        ... exc.retry_after seconds ...
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.core.cache import cache

# The limits in one place (scope: (hits, seconds)); settings may override them.
LIMITS: dict[str, tuple[int, int]] = {
    "destination-test": (10, 60),  # per administrator
    "destination-test-ip": (30, 60),  # per client address
    "job-trigger": (6, 60),  # trigger URL calls per job (a POS at day close calls once)
    "job-trigger-ip": (30, 60),  # trigger URL calls per client address (wrong tokens too)
    # "Forgot your password?" and the Users page's reset / invitation e-mails.
    "password-reset-ip": (5, 3600),  # per client address
    "password-reset-address": (3, 3600),  # per e-mail address (no mail bombing)
    "source-test": (10, 60),  # per administrator
}


class RateLimited(Exception):
    def __init__(self, scope: str, retry_after: int) -> None:
        super().__init__(f"Too many attempts; try again in {retry_after} seconds.")
        self.scope = scope
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limit:
    hits: int
    window: int


def limit_for(scope: str) -> Limit:
    from django.conf import settings

    overrides = getattr(settings, "BACKUPSITE_RATE_LIMITS", {}) or {}
    hits, window = overrides.get(scope) or LIMITS[scope]
    return Limit(int(hits), int(window))


def _cache_key(scope: str, key: str, bucket: int) -> str:
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:32]
    return f"ratelimit:{scope}:{digest}:{bucket}"


def hit(scope: str, key: str, *, limit: int | None = None, window: int | None = None, now: float | None = None) -> int:
    """Count one hit; raise :class:`RateLimited` once more than *limit* hits fell into
    the current window. Returns the hits counted so far in this window."""
    configured = limit_for(scope) if limit is None or window is None else Limit(limit, window)
    now = time.time() if now is None else now
    bucket = int(now // configured.window)
    cache_key = _cache_key(scope, key, bucket)
    # add() is atomic: only the first hit of a window creates the counter.
    if cache.add(cache_key, 1, timeout=configured.window + 5):
        count = 1
    else:
        try:
            count = cache.incr(cache_key)
        except ValueError:  # expired between add() and incr()
            cache.add(cache_key, 1, timeout=configured.window + 5)
            count = 1
    if count > configured.hits:
        retry_after = max(1, int((bucket + 1) * configured.window - now))
        raise RateLimited(scope, retry_after)
    return count


def reset(scope: str, key: str, *, now: float | None = None) -> None:
    configured = limit_for(scope)
    now = time.time() if now is None else now
    cache.delete(_cache_key(scope, key, int(now // configured.window)))
