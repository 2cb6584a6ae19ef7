"""Node tokens that authenticated lately, cached in Redis for the heartbeat fast path (``portal.swarm.fastbeat``).

The fast path answers a vouched node's heartbeat without PostgreSQL, so it cannot run the token lookup of
:meth:`~portal.accounts.models.BearerSecret.authenticate`. Instead that lookup, whenever it accepts a node
token, leaves ``<prefix>:tok:<digest>`` = ``<token id>:<user id>`` in the Redis cache for at most
:data:`ENTRY_SECONDS` (60) and never past the token's ``expires_at``.

Withdrawal cannot simply delete the key: a lookup that read the token just before a revocation committed
could write it again just after. So withdrawal writes a *tombstone* (``-``, for :data:`TOMBSTONE_SECONDS`,
longer than any entry lives) and entries are written (or renewed) only where no tombstone is (one Lua step): a
tombstone wins over any lookup in flight, and the token is looked up in the database again once it is gone.

Withdrawn: a token saved (revoked, its expiry changed: the admin's form) or deleted, and every token of a
user saved inactive (banned) or banned by the admin's bulk action; each inside the transaction and again once
it commits. A change made behind Django's back (a SQL ``UPDATE``) reaches the fast path within the TTL.
Without a Redis cache (embedded runs) nothing is cached and nothing needs withdrawing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import transaction
from redis import Redis

ENTRY_SECONDS = 60.0
TOMBSTONE = "-"
TOMBSTONE_SECONDS = 120  # longer than an entry lives, and than any request's lookup can take


# Write the entry (or renew its lifetime: it then ends with the node's vouch, written by the same request) unless
# a tombstone is there.
_REMEMBER = """
if redis.call('GET', KEYS[1]) ~= ARGV[3] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
"""


@lru_cache(maxsize=16)
def _remember_script(pool):
    """:data:`_REMEMBER`, registered once per connection pool (EVALSHA; loaded again if Redis forgot it)."""
    return Redis(connection_pool=pool).register_script(_REMEMBER)


def _cache() -> RedisCache | None:
    cache = caches["default"]
    return cache if isinstance(cache, RedisCache) else None


def key(cache: RedisCache, digest: str) -> str:
    """The Redis key of the token whose secret has SHA-256 ``digest``."""
    return cache.make_key(f"tok:{digest}")


def remember(digest: str, token_id: int, user_id: int, expires_at: datetime | None, now: datetime) -> None:
    """Cache a node token that just authenticated (unless a withdrawal's tombstone is there)."""
    cache = _cache()
    if cache is None or not settings.SWARM_HEARTBEAT_FAST_PATH:
        return
    seconds = ENTRY_SECONDS
    if expires_at is not None:
        seconds = min(seconds, (expires_at - now).total_seconds())
    if seconds < 0.001:
        return
    client = cache._cache.get_client(write=True)
    _remember_script(client.connection_pool)(
        keys=[key(cache, digest)], args=[f"{token_id}:{user_id}", int(seconds * 1000), TOMBSTONE]
    )


def forget(digests: Iterable[str]) -> None:
    """Withdraw the cached tokens with these digests, now and again once the current transaction commits."""
    digests = [d for d in digests if d]
    if not digests or _cache() is None:
        return
    _bury(digests)
    transaction.on_commit(lambda: _bury(digests))


def forget_users(user_ids: Iterable[int]) -> None:
    """Withdraw every cached node token of these users (banned, deactivated, deleted)."""
    from portal.accounts.models import NodeToken

    user_ids = list(user_ids)
    if not user_ids or _cache() is None:
        return
    forget(NodeToken.objects.filter(user_id__in=user_ids).values_list("digest", flat=True))


def _bury(digests: list[str]) -> None:
    cache = _cache()
    client = cache._cache.get_client(write=True)
    with client.pipeline(transaction=False) as pipe:
        for digest in digests:
            pipe.set(key(cache, digest), TOMBSTONE, ex=TOMBSTONE_SECONDS)
        pipe.execute()


def _token_saved(sender, instance, created, **kwargs) -> None:
    if not created:  # revoked, or its expiry or owner changed: looked up afresh
        forget([instance.digest])


def _token_deleted(sender, instance, **kwargs) -> None:
    forget([instance.digest])


def _user_saved(sender, instance, created, **kwargs) -> None:
    if not created and not instance.is_active:
        forget_users([instance.pk])


def connect() -> None:
    """Withdraw cached tokens on every ORM change that can stop one (``AccountsConfig.ready``)."""
    from django.db.models.signals import post_delete, post_save

    from portal.accounts.models import NodeToken

    post_save.connect(_token_saved, sender=NodeToken, dispatch_uid="tokencache.token_saved")
    post_delete.connect(_token_deleted, sender=NodeToken, dispatch_uid="tokencache.token_deleted")
    post_save.connect(_user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="tokencache.user_saved")
