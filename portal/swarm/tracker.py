"""The tracker: nodes register their span, heartbeat, leave, and expire when they go quiet.

Views and tasks call these functions; each runs in one transaction, so a rejected request
leaves the database as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.swarm import beats
from portal.swarm.live import health_changed
from portal.swarm.models import Heartbeat, Node, NodeKey, SwarmModel
from portal.swarm.weights_check import weights_refusal
from swarmnode.discovery import ANNOUNCED_FIELDS, PeerInfo
from swarmnode.relaying.peer_address import serves_privately
from swarmnode.trust.receipts import signing_key


class TrackerError(Exception):
    """A request the tracker refuses; ``status`` is the HTTP status to answer with.

    Attributes:
        status: 400 (bad span), 403 (banned), 404 (not this token's node), 409 (conflict), 410 (gone offline).
        code: short machine-readable reason.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Beat:
    """What a heartbeat reports."""

    cache_tokens_left: int = 0
    throughput: float | None = None
    open_sessions: int = 0


def register_node(token: NodeToken, reg: PeerInfo, now: datetime | None = None) -> tuple[Node, bool]:
    """Register a node of ``token``'s account, or refresh the same node after a restart.

    A node announcing an identity key *is* that key: its row is the owner's node with the key, whatever
    token, address, span or model it registered with before (a restart, a new port, a new span, a new
    token for the same machine), so its reputation, receipts, escrow and history stay on one row. The
    caller (the API view) checked that the node holds the key, and a key belongs to its first proven
    owner for ever (:class:`~portal.swarm.models.NodeKey`): a stranger's registration with it is refused.
    A node without a key is the same node when token, model, span and URL are the same (even if it was
    marked offline). Any other overlap with one of the token's active nodes is refused, so one machine
    cannot pose as several nodes serving the same blocks.

    Returns:
        The node and whether it was created.

    Raises:
        TrackerError: unknown model (400), span outside the model (400), overlap with another active
            node of this token (409), URL held by another account's node (409), too many nodes (409),
            public key owned by another account (409 ``key_taken``), blocks other than the model's signed
            manifest names (409 ``weights_mismatch``, :mod:`portal.swarm.weights_check`), banned node (403).
            A malformed public key raises ValueError (the API's serializer refuses it first).
    """
    now = now or timezone.now()
    with transaction.atomic():
        # Lock the token row: concurrent registrations of one machine run one after the other.
        NodeToken.objects.select_for_update().filter(pk=token.pk).first()
        model = _model_for(reg)
        if (why := weights_refusal(model, reg)) is not None:  # not the signed manifest's blocks (#19)
            raise TrackerError(409, "weights_mismatch", why)
        if reg.public_key:
            if not NodeKey.claim(token.user_id, reg.public_key):
                raise TrackerError(409, "key_taken", "this public key belongs to another account's node")
            same = _node_of_key(token.user_id, reg.public_key)
        else:  # the same machine, span and address as an earlier registration (live or not): a restart
            same = (
                Node.objects.filter(token=token, model=model, start_block=reg.start_block, end_block=reg.end_block)
                .filter(url=reg.url, relay=reg.relay, public_key="")
                .order_by("-last_seen_at")
                .first()
            )
        if same is not None and same.banned:
            raise TrackerError(403, "banned", "this node is banned from the swarm")
        _retire_predecessors(token, reg, same)
        _refuse_conflicts(token, model, reg, same)
        fields = {name: getattr(reg, name) for name in ANNOUNCED_FIELDS if name != "model"}
        fields.update(state=Node.State.JOINING, last_seen_at=now)
        if same is not None:
            moved = {same.model.name} if same.model_id != model.pk else set()
            Node.objects.filter(pk=same.pk).update(token=token, model=model, **fields)
            same.refresh_from_db()
            node, created = same, False
        else:
            node = Node.objects.create(owner=token.user, token=token, model=model, registered_at=now, **fields)
            created, moved = True, set()
        _forget_on_commit([node.pk])  # joining again: its next heartbeat goes through the database
        for name in {model.name, *moved}:
            health_changed(name)
        return node, created


def _node_of_key(owner_id: int, public_key: str) -> Node | None:
    """The owner's node with this identity key (its newest, should rows from before keys were identities remain).

    Locks the key's :class:`NodeKey` row first, so two registrations of one key (say, from two tokens of the
    owner) run one after the other and cannot both create a row.
    """
    key = signing_key(public_key)
    NodeKey.objects.select_for_update().filter(signing_key=key).first()
    return (
        Node.objects.select_related("model")
        .filter(owner_id=owner_id, public_key__startswith=key + ",")
        .order_by("-last_seen_at", "-id")
        .first()
    )


def _retire_predecessors(token: NodeToken, reg: PeerInfo, same: Node | None) -> None:
    """Mark offline this token's other active nodes at the registering address: a process that holds the
    address now means they are gone (crashed without saying goodbye), and a node restarted with a new key
    on the same port must not be refused as overlapping its own dead predecessor."""
    if not reg.url:
        return
    gone = Node.objects.active().filter(token=token, url=reg.url)
    if same is not None:
        gone = gone.exclude(pk=same.pk)
    retired = list(gone.values_list("pk", flat=True))
    if retired:
        Node.objects.filter(pk__in=retired).update(state=Node.State.OFFLINE)
        _forget_on_commit(retired)


def _model_for(reg: PeerInfo) -> SwarmModel:
    try:
        model = SwarmModel.objects.get(name=reg.model)
    except SwarmModel.DoesNotExist:
        raise TrackerError(400, "unknown_model", f"the swarm does not serve a model named {reg.model!r}") from None
    if reg.end_block > model.num_blocks:
        raise TrackerError(
            400,
            "span_outside_model",
            f"blocks {reg.start_block}:{reg.end_block} fall outside {model.name} (blocks 0:{model.num_blocks})",
        )
    return model


def _refuse_private(reg: PeerInfo) -> None:
    """Every client, node and gateway reading the tracker dials what it lists: a private address there (the cloud
    metadata service, a LAN admin port) would turn them all into a stranger's probes (#17 finding 12)."""
    if settings.ALLOW_PRIVATE_PEERS:
        return
    try:
        host = urlsplit(reg.url).hostname or ""  # a relay address names its relay's host the same way
    except ValueError:
        host = ""
    if host and serves_privately(host):
        raise TrackerError(400, "private_address", f"{reg.url[:200]} is not a public address (this swarm lists none)")


def _refuse_conflicts(token: NodeToken, model: SwarmModel, reg: PeerInfo, same: Node | None) -> None:
    _refuse_private(reg)
    mine = Node.objects.active().filter(token=token, model=model)
    overlapping = mine.filter(start_block__lt=reg.end_block, end_block__gt=reg.start_block)
    if same is not None:
        overlapping = overlapping.exclude(pk=same.pk)
    clash = overlapping.first()
    if clash is not None:
        raise TrackerError(
            409,
            "overlapping_span",
            f"this token already serves blocks {clash.start_block}:{clash.end_block} of {model.name} "
            f"(node {clash.pk}); one machine serves each block once",
        )
    if reg.url and Node.objects.active().filter(url=reg.url).exclude(owner=token.user).exists():
        raise TrackerError(409, "url_taken", f"{reg.url} is registered by another account's node")
    reviving = same is None or same.state == Node.State.OFFLINE
    limit = settings.SWARM_MAX_NODES_PER_TOKEN
    if reviving and Node.objects.active().filter(token=token).count() >= limit:
        raise TrackerError(409, "too_many_nodes", f"a token may run at most {limit} active nodes")


def _token_node(token: NodeToken, node_id: int, lock: bool = False) -> Node:
    nodes = Node.objects.select_for_update() if lock else Node.objects
    node = nodes.filter(pk=node_id, token=token).first()
    if node is None:
        raise TrackerError(404, "no_such_node", f"token has no node {node_id}")
    if node.banned:
        raise TrackerError(403, "banned", "this node is banned from the swarm")
    return node


def record_heartbeat(token: NodeToken, node_id: int, beat: Beat, now: datetime | None = None) -> Node.State:
    """Record a heartbeat: the node is online and its stats are fresh. Returns the node's new state.

    The hot path of the tracker (every node, every few seconds). With Redis (:mod:`portal.swarm.beats`), an
    online node the tracker vouched for costs one Redis round trip and no database write: its beat is buffered
    and :func:`flush_heartbeats` writes it. Otherwise (no vouch, no Redis): one UPDATE, plus one INSERT into the
    history at most every ``SWARM_HEARTBEAT_HISTORY_EVERY`` seconds (a single statement on PostgreSQL), and
    with Redis a fresh vouch, written while the node's row is locked.

    Raises:
        TrackerError: not this token's node (404), banned (403), already marked offline (410: register again).
    """
    now = now or timezone.now()
    fields = {
        "state": Node.State.ONLINE,
        "last_seen_at": now,
        "cache_tokens_left": beat.cache_tokens_left,
        "open_sessions": beat.open_sessions,
    }
    if beat.throughput is not None:
        fields["throughput"] = beat.throughput
    behind = beats.enabled()
    if behind and beats.admit(token.pk, node_id, now, beat.cache_tokens_left, beat.open_sessions, beat.throughput):
        return Node.State.ONLINE
    if connection.vendor == "postgresql" and not behind:
        if _online_heartbeat_postgres(token.pk, node_id, beat, now):  # autocommit: one round trip
            return Node.State.ONLINE
    elif connection.vendor == "postgresql":
        with transaction.atomic():
            # The vouch is written before this transaction commits: a ban or leave waits for the row lock the
            # UPDATE holds, commits after, and deletes the vouch after that (never the other way round).
            if _online_heartbeat_postgres(token.pk, node_id, beat, now):
                beats.vouch(token.pk, node_id)
                return Node.State.ONLINE
    with transaction.atomic():
        return _heartbeat_orm(token, node_id, beat, fields, now, behind)


def _heartbeat_orm(token: NodeToken, node_id: int, beat: Beat, fields: dict, now: datetime, behind: bool):
    """The general path (joining, offline, banned or foreign nodes; SQLite): inside the caller's transaction."""
    # Locked, so that two overlapping heartbeats of a joining node cannot both miss it.
    row = (
        Node.objects.select_for_update(of=("self",))
        .filter(pk=node_id, token=token)
        .values_list("state", "banned", "model__name")
        .first()
    )
    if row is None or row[1]:
        _token_node(token, node_id)  # raises the 404 or 403
    state, _, model_name = row
    if state == Node.State.OFFLINE:
        raise TrackerError(410, "offline", "the node was marked offline; register again")
    Node.objects.filter(pk=node_id).update(**fields)
    if state == Node.State.JOINING:
        health_changed(model_name)
    if behind:
        beats.vouch(token.pk, node_id)
    Heartbeat.log_unless_recent(node_id, now, beat.cache_tokens_left, beat.open_sessions, beat.throughput)
    return Node.State.ONLINE


def _online_heartbeat_postgres(token_id: int, node_id: int, beat: Beat, now: datetime) -> bool:
    """The common case (an online node's heartbeat) as one statement, so one round trip to PostgreSQL.

    Same effect as the ORM path in :func:`record_heartbeat`; returns False when the node is not an
    online, unbanned node of this token, and the ORM path then sorts out what to answer.
    """
    node_table = connection.ops.quote_name(Node._meta.db_table)
    beat_table = connection.ops.quote_name(Heartbeat._meta.db_table)
    sql = f"""
        WITH touched AS (
            UPDATE {node_table}
               SET state = %s, last_seen_at = %s, cache_tokens_left = %s, open_sessions = %s,
                   throughput = COALESCE(%s, throughput)
             WHERE id = %s AND token_id = %s AND NOT banned AND state = %s
         RETURNING id
        )
        , logged AS (
            INSERT INTO {beat_table} (node_id, at, cache_tokens_left, throughput, open_sessions)
            SELECT id, %s, %s, %s, %s FROM touched
             WHERE NOT EXISTS (SELECT 1 FROM {beat_table} h WHERE h.node_id = touched.id AND h.at > %s)
        )
        SELECT id FROM touched
    """
    online = Node.State.ONLINE.value
    recent = now - timedelta(seconds=settings.SWARM_HEARTBEAT_HISTORY_EVERY)
    params = [online, now, beat.cache_tokens_left, beat.open_sessions, beat.throughput, node_id, token_id, online]
    params += [now, beat.cache_tokens_left, beat.throughput or 0.0, beat.open_sessions, recent]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() is not None


def leave(token: NodeToken, node_id: int) -> Node:
    """A node shutting down: mark it offline now instead of waiting for it to expire."""
    with transaction.atomic():
        node = _token_node(token, node_id, lock=True)
        node.state = Node.State.OFFLINE
        node.save(update_fields=["state"])
        _forget_on_commit([node.pk])
        health_changed(node.model.name)
    return node


def _forget_on_commit(node_ids: list[int]) -> None:
    """Withdraw the nodes' heartbeat vouches now (the rows are locked by the caller's UPDATE: a heartbeat that
    misses the vouch waits for them) and again once the transaction commits (any vouch written meanwhile)."""
    if beats.enabled():
        beats.forget(node_ids)
        transaction.on_commit(lambda: beats.forget(node_ids))


def flush_heartbeats() -> int:
    """Write the heartbeats buffered in Redis to their nodes (:mod:`portal.swarm.beats`); return how many nodes.

    Runs every ``SWARM_HEARTBEAT_FLUSH_EVERY`` seconds (Celery beat) and before expiry. Nodes banned, left or
    expired since their beat was buffered stay as they are. Without write-behind there is nothing to flush.
    """
    return beats.write_pending(beats.take_pending())


def expire_stale_nodes(now: datetime | None = None) -> int:
    """Mark offline every joining/online node silent for ``SWARM_HEARTBEAT_TIMEOUT``; return how many.

    Buffered heartbeats are flushed first, so a node heard from only through Redis is not taken for silent.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SWARM_HEARTBEAT_TIMEOUT)
    flush_heartbeats()
    with transaction.atomic():
        stale = Node.objects.active().filter(last_seen_at__lt=cutoff)
        gone = list(stale.select_for_update(of=("self",)).values_list("pk", "model__name"))
        count = Node.objects.filter(pk__in=[pk for pk, _ in gone]).update(state=Node.State.OFFLINE)
        _forget_on_commit([pk for pk, _ in gone])
        for name in {name for _, name in gone}:
            health_changed(name)
    return count


def prune_heartbeats(now: datetime | None = None) -> int:
    """Delete heartbeats older than ``SWARM_HEARTBEAT_HISTORY`` seconds; return how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SWARM_HEARTBEAT_HISTORY)
    deleted, _ = Heartbeat.objects.filter(at__lt=cutoff).delete()
    return deleted


def set_banned(nodes, banned: bool) -> int:
    """Ban (hidden from clients, heartbeats refused) or unban nodes; return how many changed."""
    with transaction.atomic():
        for name in set(nodes.values_list("model__name", flat=True)):
            health_changed(name)
        if banned:
            ids = list(nodes.values_list("pk", flat=True))
            changed = Node.objects.filter(pk__in=ids).update(banned=True, state=Node.State.OFFLINE)
            _forget_on_commit(ids)  # after the UPDATE: a heartbeat missing the vouch waits for the locked rows
            return changed
        return nodes.update(banned=False)


def online_spans(model_name: str):
    """Online, usable nodes of a model, cheapest first for routing ties (the clients' peer list)."""
    return (
        Node.objects.visible()
        .filter(model__name=model_name, state=Node.State.ONLINE)
        .select_related("model")
        .order_by("start_block", "-throughput", "id")
    )
