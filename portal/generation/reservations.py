"""Credits and quota held for a generation from admission until the gateway settles what it generated.

Why: the nodes are paid for every token the gateway generates, whether or not the requester stays to
read it, so the requester must pay for every token too, and several requests at once must not promise
the same credits twice. So:

1. :func:`reserve` (at admission, under a lock per payer) holds at most what the payer can still pay for,
   minus what its other open reservations hold, and refuses a payer or an address that already runs
   ``CHAT_MAX_GENERATIONS_PER_USER`` / ``CHAT_MAX_GENERATIONS_PER_IP`` generations
   (:class:`TooManyGenerations`). The hold is the request's ``token_budget``: the gateway never
   generates more than it.
2. :func:`claim` (the gateway, before generating): a reservation already released is not served.
3. :func:`settle` (the gateway, on completion, Stop, disconnect or error): charges the tokens generated
   (at most the hold) and closes the reservation; once per reservation, whoever comes first.
4. :func:`abandon` (the requester, when no gateway took the request or the gateway went silent):
   releases an unclaimed reservation, or settles a claimed one with the tokens the requester saw.

An open reservation older than ``CHAT_RESERVATION_TTL`` (its gateway died without settling) no longer
holds anything. The table is the ``chat`` app's (``chat.Reservation``, with its migrations), so that this
package needs no app of its own; it is looked up by name, since nothing may import ``portal.chat``.
"""

from __future__ import annotations

import functools
import time
import uuid
from datetime import timedelta

from django.apps import apps
from django.conf import settings
from django.db import OperationalError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from portal.generation.protocol import BadRequest, GenerationRequest
from portal.generation.requesters import Requester
from portal.generation.spending import OutOfCredits, anonymous_keys, charge, lock_payer, tokens_allowed

TEMPLATE_TOKENS = 64  # chat template around the messages (a default system prompt, the assistant's cue)
TOKENS_PER_MESSAGE = 16  # role markers around each message
LOCK_RETRIES = 40  # about 8 s of waiting for SQLite's lock, at most


class TooManyGenerations(BadRequest):
    """The payer or the address already runs as many generations as allowed (429)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None, "too_many_generations", 429)


OPEN, RUNNING, SETTLED = "open", "running", "settled"  # chat.Reservation.State


def _reservations():
    return apps.get_model("chat", "Reservation").objects


def retry_when_locked(function):
    """Retry ``function`` (a short transaction) while SQLite says another connection holds the lock.

    The gateway's worker threads settle while the consumers store answers; a file database waits for the
    lock by itself, SQLite's shared in-memory database (the embedded tests) refuses at once instead.
    """

    @functools.wraps(function)
    def retrying(*args, **kwargs):
        for attempt in range(LOCK_RETRIES):
            try:
                return function(*args, **kwargs)
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))

    return retrying


def estimate_tokens(request: GenerationRequest) -> int:
    """An upper bound of the prompt and answer tokens of ``request`` (byte-level tokenizers: <= 1 token a byte)."""
    if request.messages is not None:
        texts = [m["content"] for m in request.messages]
        overhead = TEMPLATE_TOKENS + TOKENS_PER_MESSAGE * len(texts)
    else:
        texts, overhead = [request.prompt or ""], 1
    answer = settings.CHAT_MAX_NEW_TOKENS if request.max_new_tokens is None else request.max_new_tokens
    bound = sum(len(t.encode("utf-8")) for t in texts) + overhead + answer
    if settings.CHAT_CONTEXT_TOKENS > 0:
        bound = min(bound, settings.CHAT_CONTEXT_TOKENS)
    return bound


def _live() -> Q:
    since = timezone.now() - timedelta(seconds=float(settings.CHAT_RESERVATION_TTL))
    return Q(state__in=(OPEN, RUNNING), created_at__gte=since)


def _payer(requester: Requester) -> Q:
    return Q(user_id=requester.user_id) if requester.user_id is not None else Q(session_key=requester.session_key)


def reserve(requester: Requester, ip: str, request: GenerationRequest) -> None:
    """Hold the tokens ``request`` may use for ``requester``; set its ``token_budget`` and ``reservation``.

    Raises:
        TooManyGenerations: the payer or ``ip`` is at its limit of concurrent generations.
        OutOfCredits: the other open reservations already hold everything the payer can pay.
    """
    request.reservation, request.token_budget = hold(requester, ip, estimate_tokens(request))


def hold(requester: Requester, ip: str, tokens: int, *, exact: bool = False) -> tuple[str, int]:
    """Hold up to ``tokens`` for ``requester`` (all of them when ``exact``: an embedding's cost is known before);
    returns ``(reservation reference, tokens held)``; :func:`settle` charges and closes it.

    Raises:
        TooManyGenerations: the payer or ``ip`` is at its limit of concurrent requests.
        OutOfCredits: the other open reservations already hold everything the payer can pay (or, ``exact``,
            what is left does not pay for ``tokens``).
    """
    with transaction.atomic():
        lock_payer(requester, ip)  # concurrent admissions of one payer queue up here
        live = _reservations().filter(_live())
        if live.filter(_payer(requester)).count() >= settings.CHAT_MAX_GENERATIONS_PER_USER:
            raise TooManyGenerations(
                f"at most {settings.CHAT_MAX_GENERATIONS_PER_USER} generations at once: wait for one to finish"
            )
        if ip and live.filter(ip=ip).count() >= settings.CHAT_MAX_GENERATIONS_PER_IP:
            raise TooManyGenerations(f"at most {settings.CHAT_MAX_GENERATIONS_PER_IP} generations at once per address")
        held = _held(live, requester, ip)
        left = tokens_allowed(requester, ip) - held
        if left <= 0:
            raise OutOfCredits("your credits are all held by the answers you are generating now: wait for them")
        if exact and left < tokens:
            raise OutOfCredits(f"this request costs {tokens} tokens and your credits pay for {left} now")
        tokens = min(left, tokens)
        reservation = _reservations().create(
            reference=uuid.uuid4().hex, user_id=requester.user_id, session_key=requester.session_key, ip=ip,
            tokens=tokens,
        )  # fmt: skip
    return reservation.reference, tokens


def _held(live, requester: Requester, ip: str) -> int:
    """Tokens the payer's live reservations hold (anonymous: by session or by address, whichever holds more)."""
    if requester.user_id is not None:
        return live.filter(user_id=requester.user_id).aggregate(n=Sum("tokens"))["n"] or 0
    keys = anonymous_keys(requester, ip)
    held = [live.filter(session_key=requester.session_key, user_id=None).aggregate(n=Sum("tokens"))["n"] or 0]
    if any(k.startswith("ip:") for k in keys):
        held.append(live.filter(ip=ip, user_id=None).aggregate(n=Sum("tokens"))["n"] or 0)
    return max(held)


@retry_when_locked
def claim(reference: str) -> bool:
    """The gateway takes the reservation; False: it was released (the requester gave up), do not generate."""
    if not reference:
        return False
    return bool(_reservations().filter(reference=reference, state=OPEN).update(state=RUNNING))


@retry_when_locked
def settle(reference: str, tokens: int) -> int:
    """Charge ``tokens`` (at most the hold) for the reservation and close it; once (later calls charge nothing).

    Returns:
        the tokens charged by this call.
    """
    if not reference:
        return 0
    with transaction.atomic():
        reservation = _reservations().select_for_update().filter(reference=reference).first()
        if reservation is None or reservation.state == SETTLED:
            return 0
        used = max(0, min(int(tokens), reservation.tokens))
        charge(Requester(reservation.user_id, reservation.session_key), reservation.ip, used, f"gen:{reference}")
        reservation.used, reservation.state, reservation.settled_at = used, SETTLED, timezone.now()
        reservation.save(update_fields=["used", "state", "settled_at"])
    return used


@retry_when_locked
def abandon(reference: str, tokens_seen: int) -> int:
    """The requester gives up on the gateway: release an unclaimed reservation, or settle a claimed one
    with ``tokens_seen`` (what the requester knows was generated). Returns the tokens charged."""
    if _reservations().filter(reference=reference, state=OPEN).update(state=SETTLED, settled_at=timezone.now()):
        return 0
    return settle(reference, tokens_seen)
