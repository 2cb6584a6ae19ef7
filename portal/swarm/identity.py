"""A node is its identity key: folding the rows that older portals made per restart into one per key.

Before keys were identities the tracker made a new node row for every restart on a new address or span,
so one node's reputation, receipts, escrow and history were split across rows. :func:`merge_nodes_by_key`
(run by migration ``swarm.0007``) keeps one row per owner and key and points everything at it:

- the survivor is the row seen last (it holds the node's current address, span and state); it takes the
  earliest ``registered_at`` (the node's age, which escrow release looks at) and is banned if any row was;
- heartbeats, score history, audit evidence (as audited node and as auditor), client reports, receipts and
  escrow accounts move to it: earnings stay where they are, an escrow account keeps its credits and code
  and is released by the survivor's reputation;
- the reputation evidence is summed, each row's first decayed to the latest of their moments (evidence is
  additive: the same node earned all of it), and a suspension on any row stays on the survivor.

Rows of another account announcing the key are never merged into the owner's node (they are not its node).
"""

from __future__ import annotations

import math
from collections import defaultdict

from django.conf import settings
from django.db.models import Q

from swarmnode.trust.receipts import signing_key


def merge_nodes_by_key(apps) -> int:
    """Merge every owner's node rows that announce the same signing key into one; return rows removed.

    Args:
        apps: an app registry (a migration's historical ``apps``, or ``django.apps.apps``).
    """
    Node = apps.get_model("swarm", "Node")
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for pk, owner_id, public_key in Node.objects.exclude(public_key="").values_list("pk", "owner_id", "public_key"):
        try:
            groups[(owner_id, signing_key(public_key))].append(pk)
        except ValueError:
            continue  # a malformed key names no node
    removed = 0
    for ids in groups.values():
        if len(ids) > 1:
            removed += _merge(apps, list(Node.objects.filter(pk__in=ids).order_by("-last_seen_at", "-id")))
    return removed


def _merge(apps, rows) -> int:
    survivor, others = rows[0], rows[1:]
    gone = [n.pk for n in others]
    _merge_standing(apps, survivor, gone)
    for label, model, field in (
        ("swarm", "Heartbeat", "node"),
        ("reputation", "ScoreSnapshot", "node"),
        ("reputation", "ClientReport", "node"),
        ("reputation", "AuditEvidence", "auditor"),
        ("ledger", "Receipt", "node"),
        ("ledger", "Account", "node"),
    ):
        apps.get_model(label, model).objects.filter(**{f"{field}__in": gone}).update(**{field: survivor.pk})
    evidence = apps.get_model("reputation", "AuditEvidence").objects
    # One record per audited result (a unique constraint): a result recorded on two rows is kept once.
    kept = set(evidence.filter(node=survivor.pk).exclude(fingerprint="").values_list("fingerprint", flat=True))
    for row in evidence.filter(node__in=gone).exclude(fingerprint="").order_by("id"):
        if row.fingerprint in kept:
            row.delete()
        else:
            kept.add(row.fingerprint)
    evidence.filter(node__in=gone).update(node=survivor.pk)
    survivor.registered_at = min(n.registered_at for n in rows)
    if any(n.banned for n in rows):
        survivor.banned = True
        survivor.state = "offline"
    type(survivor).objects.filter(pk=survivor.pk).update(
        registered_at=survivor.registered_at, banned=survivor.banned, state=survivor.state
    )
    type(survivor).objects.filter(pk__in=gone).delete()
    return len(gone)


def _merge_standing(apps, survivor, gone: list[int]) -> None:
    Standing = apps.get_model("reputation", "NodeStanding")
    standings = list(Standing.objects.filter(Q(node=survivor.pk) | Q(node__in=gone)))
    if not standings:
        return
    at = max(s.updated_at for s in standings)
    signals: dict[str, list[float]] = {}
    for s in standings:
        factor = math.pow(0.5, max((at - s.updated_at).total_seconds(), 0.0) / settings.REPUTATION_HALF_LIFE)
        for name, (pos, neg) in s.signals.items():
            total = signals.setdefault(name, [0.0, 0.0])
            total[0] += pos * factor
            total[1] += neg * factor
    keep = next((s for s in standings if s.node_id == survivor.pk), standings[0])
    suspended = next((s for s in standings if s.suspended), None)
    if suspended is not None:
        for field in ("suspended", "review", "suspended_at", "suspension_reason", "reviewed_by_id", "reviewed_at"):
            setattr(keep, field, getattr(suspended, field))
    keep.signals = signals
    keep.updated_at = at
    keep.uptime_at = max(s.uptime_at for s in standings)
    keep.score = 0.0 if keep.suspended else _score_of(signals)
    Standing.objects.filter(pk__in=[s.pk for s in standings if s.pk != keep.pk]).delete()
    keep.node_id = survivor.pk
    keep.save()


def _score_of(signals: dict) -> float:
    # portal.reputation.scoring.score_of, restated: a migration must not depend on code that may change later.
    pos = sum(p for p, _ in signals.values())
    neg = sum(n for _, n in signals.values())
    prior, weight = settings.REPUTATION_PRIOR, settings.REPUTATION_PRIOR_WEIGHT
    return (pos + prior * weight) / (pos + neg + weight)
