"""Write-behind heartbeats (#24 goal 5): an online node's heartbeat lands in Redis; a flush writes them in batches.

Every node heartbeats every few seconds, and most heartbeats only say "still here, these are my stats". With Redis
(production: ``REDIS_URL`` and the Redis cache), such a heartbeat costs one Redis round trip instead of a
PostgreSQL write:

- **Vouching.** When a heartbeat of an online (or joining) unbanned node goes through the database path, the
  tracker *vouches* for it: ``<prefix>:hb:ok:<node id>`` holds the id of the token allowed to heartbeat it, for
  ``SWARM_HEARTBEAT_VOUCH_TTL`` seconds (and no longer than ``SWARM_HEARTBEAT_HISTORY_EVERY``: the heartbeat that
  finds the vouch gone writes the history row then due). The key is written inside the heartbeat's transaction,
  while the node's row is locked, so a ban or leave (which update that row) commit after it and delete it after.
- **Admitting.** A heartbeat whose token matches the vouch is admitted by one Lua script (one round trip): the
  node's last-seen and stats go into the hash ``<prefix>:hb:pending`` (one field per node; the latest wins).
  Anything else (no vouch, another token: a foreign node id, a banned, offline or joining node) takes the
  database path, which answers 404/403/410 and handles the joining -> online transition. Under gunicorn,
  :mod:`portal.swarm.fastbeat` runs the same check (and the token's, from a Redis token cache) in front of
  Django, so such a heartbeat costs no Django request at all.
- **Forgetting.** Ban, leave, expiry and re-registration delete the node's vouch (inside their transaction, and
  again once it commits), so the next heartbeat takes the database path and is refused at once.
- **Flushing.** :func:`take_pending` empties the hash atomically; the tracker's flush writes what it held in one
  statement that keeps ``WHERE NOT banned AND state = 'online'``, so a late flush can neither un-ban nor revive a
  node. It runs every ``SWARM_HEARTBEAT_FLUSH_EVERY`` seconds (Celery beat) and before expiry.

The vouch TTL bounds how long a change made behind the tracker's back (a SQL ``UPDATE``, the admin's edit form)
takes to reach heartbeats: at most ``SWARM_HEARTBEAT_VOUCH_TTL`` seconds. Embedded runs (no Redis) keep the
direct database path: :func:`enabled` is False there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection, transaction
from redis import Redis

from portal.swarm.models import Heartbeat, Node

# The vouch must name this token; then the node's entry goes into the pending hash. Returns 1 if admitted.
_ADMIT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# Everything pending, and the hash gone, in one step: each entry is flushed once, whoever else flushes.
_TAKE = """
local entries = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return entries
"""


@dataclass(frozen=True)
class PendingBeat:
    """One node's latest buffered heartbeat."""

    node_id: int
    at: datetime
    cache_tokens_left: int
    open_sessions: int
    throughput: float | None


def enabled() -> bool:
    """Whether heartbeats are written behind (``SWARM_HEARTBEAT_WRITE_BEHIND`` and a Redis default cache)."""
    return settings.SWARM_HEARTBEAT_WRITE_BEHIND and isinstance(caches["default"], RedisCache)


def _redis() -> tuple[Redis, RedisCache]:
    cache = caches["default"]
    return _pool_client(cache._cache._get_connection_pool(write=True)), cache


@lru_cache(maxsize=16)
def _pool_client(pool) -> Redis:
    """One client per connection pool (thread-safe): the cache's ``get_client`` builds one per call."""
    return Redis(connection_pool=pool)


def _vouch_key(cache: RedisCache, node_id: int) -> str:
    return cache.make_key(f"hb:ok:{node_id}")


def _pending_key(cache: RedisCache) -> str:
    return cache.make_key("hb:pending")


def _script(client: Redis, source: str):
    """A registered script (EVALSHA, loaded again if Redis forgot it), one per connection pool."""
    return _pool_script(client.connection_pool, source)


@lru_cache(maxsize=16)
def _pool_script(pool, source: str):
    return Redis(connection_pool=pool).register_script(source)


def admit(token_id: int, node_id: int, at: datetime, cache_tokens_left: int, open_sessions: int, throughput) -> bool:
    """Buffer a heartbeat if the tracker vouched for ``node_id`` under ``token_id``; False: take the database path."""
    client, cache = _redis()
    entry = json.dumps([at.timestamp(), cache_tokens_left, open_sessions, throughput])
    keys = [_vouch_key(cache, node_id), _pending_key(cache)]
    return bool(_script(client, _ADMIT)(keys=keys, args=[str(token_id), str(node_id), entry]))


def vouch(token_id: int, node_id: int) -> None:
    """Let ``token_id``'s heartbeats of ``node_id`` (online, unbanned) take the fast path for a while.

    At most ``SWARM_HEARTBEAT_VOUCH_TTL`` and at most ``SWARM_HEARTBEAT_HISTORY_EVERY`` seconds: the heartbeat
    after that goes through the database, which writes the history row then due (with a history row per
    heartbeat, ``HISTORY_EVERY`` = 0, no heartbeat is buffered).
    """
    seconds = min(settings.SWARM_HEARTBEAT_VOUCH_TTL, settings.SWARM_HEARTBEAT_HISTORY_EVERY)
    if seconds <= 0:
        return
    client, cache = _redis()
    client.set(_vouch_key(cache, node_id), str(token_id), px=max(1, int(seconds * 1000)))


def forget(node_ids: Iterable[int]) -> None:
    """Withdraw the vouches of ``node_ids``: their next heartbeat takes the database path."""
    if not enabled():
        return
    client, cache = _redis()
    keys = [_vouch_key(cache, node_id) for node_id in node_ids]
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def take_pending() -> list[PendingBeat]:
    """Remove and return every buffered heartbeat (empty when write-behind is off)."""
    if not enabled():
        return []
    client, cache = _redis()
    flat = _script(client, _TAKE)(keys=[_pending_key(cache)])
    beats = []
    for field, value in zip(flat[::2], flat[1::2], strict=True):
        at, cache_tokens_left, open_sessions, throughput = json.loads(value)
        beats.append(
            PendingBeat(
                node_id=int(field),
                at=datetime.fromtimestamp(at, tz=UTC),
                cache_tokens_left=int(cache_tokens_left),
                open_sessions=int(open_sessions),
                throughput=None if throughput is None else float(throughput),
            )
        )
    return beats


def write_pending(beats: list[PendingBeat]) -> int:
    """Write buffered heartbeats to their nodes (and the history, at most a row per node per
    ``SWARM_HEARTBEAT_HISTORY_EVERY``); return how many nodes were updated.

    Only online, unbanned nodes are touched, and never with an older heartbeat than they hold: a flush that
    runs after a ban, a leave or an expiry changes nothing (the row's ``WHERE`` is checked again after any lock
    wait), and one that overtakes another flush cannot move a node's last-seen back.
    """
    if not beats:
        return 0
    if connection.vendor == "postgresql":
        return _write_postgres(beats)
    written = 0
    with transaction.atomic():
        for beat in beats:
            written += _write_orm(beat)
    return written


def _write_orm(beat: PendingBeat) -> int:
    stats = {"cache_tokens_left": beat.cache_tokens_left, "open_sessions": beat.open_sessions}
    if beat.throughput is not None:
        stats["throughput"] = beat.throughput
    node = Node.objects.filter(pk=beat.node_id, banned=False, state=Node.State.ONLINE, last_seen_at__lte=beat.at)
    if not node.update(last_seen_at=beat.at, **stats):
        return 0
    Heartbeat.log_unless_recent(beat.node_id, beat.at, beat.cache_tokens_left, beat.open_sessions, beat.throughput)
    return 1


def _write_postgres(beats: list[PendingBeat]) -> int:
    """Every beat in one statement (one round trip), in chunks of a few thousand nodes."""
    node_table = connection.ops.quote_name(Node._meta.db_table)
    beat_table = connection.ops.quote_name(Heartbeat._meta.db_table)
    beats = sorted(beats, key=lambda b: b.node_id)  # one lock order for every flusher
    written = 0
    for start in range(0, len(beats), 5000):
        chunk = beats[start : start + 5000]
        row = "(%s::bigint, %s::timestamptz, %s::integer, %s::integer, %s::double precision)"
        values = ", ".join([row] * len(chunk))
        sql = f"""
            WITH beat (id, at, cache_tokens_left, open_sessions, throughput) AS (VALUES {values})
            , touched AS (
                UPDATE {node_table} n
                   SET last_seen_at = b.at, cache_tokens_left = b.cache_tokens_left,
                       open_sessions = b.open_sessions, throughput = COALESCE(b.throughput, n.throughput)
                  FROM beat b
                 WHERE n.id = b.id AND NOT n.banned AND n.state = %s AND n.last_seen_at <= b.at
             RETURNING n.id, b.at, b.cache_tokens_left, b.open_sessions, b.throughput
            )
            , logged AS (
                INSERT INTO {beat_table} (node_id, at, cache_tokens_left, throughput, open_sessions)
                SELECT t.id, t.at, t.cache_tokens_left, COALESCE(t.throughput, 0), t.open_sessions FROM touched t
                 WHERE NOT EXISTS (
                     SELECT 1 FROM {beat_table} h WHERE h.node_id = t.id AND h.at > t.at - %s * interval '1 second'
                 )
            )
            SELECT count(*) FROM touched
        """
        params: list = []
        for b in chunk:
            params += [b.node_id, b.at, b.cache_tokens_left, b.open_sessions, b.throughput]
        params += [Node.State.ONLINE.value, float(settings.SWARM_HEARTBEAT_HISTORY_EVERY)]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            written += cursor.fetchone()[0]
    return written
