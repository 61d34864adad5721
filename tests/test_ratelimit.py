"""The shared rate limiter, on the cache of the stack: the database cache of the
embedded default, Redis on the PostgreSQL stack (as in production)."""

from __future__ import annotations

import pytest

from backupsite import ratelimit
from tests import teststack


@pytest.fixture(autouse=True)
def clean_cache(db):
    from django.core.cache import cache

    cache.clear()


def test_the_stack_cache_is_what_counts(settings):
    expected = "redis.RedisCache" if teststack.is_postgres() else "db.DatabaseCache"
    assert settings.CACHES["default"]["BACKEND"] == f"django.core.cache.backends.{expected}"


def test_limit_per_window_then_refused_with_retry_after():
    now = 1_000_000.0
    for n in range(1, 4):
        assert ratelimit.hit("destination-test", "user:1", limit=3, window=60, now=now) == n
    with pytest.raises(ratelimit.RateLimited) as info:
        ratelimit.hit("destination-test", "user:1", limit=3, window=60, now=now + 10)
    assert 1 <= info.value.retry_after <= 60
    # Another key and another scope count on their own; the next window starts afresh.
    assert ratelimit.hit("destination-test", "user:2", limit=3, window=60, now=now) == 1
    assert ratelimit.hit("destination-test-ip", "user:1", limit=3, window=60, now=now) == 1
    assert ratelimit.hit("destination-test", "user:1", limit=3, window=60, now=now + 60) == 1


def test_configured_limits_and_overrides(settings):
    assert ratelimit.limit_for("destination-test") == ratelimit.Limit(10, 60)
    settings.BACKUPSITE_RATE_LIMITS = {"destination-test": (2, 5)}
    assert ratelimit.limit_for("destination-test") == ratelimit.Limit(2, 5)
    ratelimit.hit("destination-test", "k", now=0)
    ratelimit.hit("destination-test", "k", now=0)
    with pytest.raises(ratelimit.RateLimited):
        ratelimit.hit("destination-test", "k", now=1)
