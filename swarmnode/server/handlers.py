"""One handler per request type a node accepts (spec §4), and the table that routes to them.

A handler takes the serving node, a decoded request and the connection it came on (its *owner*:
sessions belong to the connection that opened them, §1.3), and returns the one reply. It raises
:class:`~swarmnode.protocol.ProtocolError` for a request it refuses; :meth:`Node.handle_frame
<swarmnode.server.node.Node.handle_frame>` turns that into an ``error`` reply, and any other
exception into ``internal``. Decoding, push routing (§7) and the connection itself stay in the node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from swarmnode.protocol import (
    DTYPE_SIZES,
    CloseSession,
    Forward,
    ForwardResult,
    Info,
    InfoReply,
    Message,
    OpenSession,
    ProtocolError,
    SessionClosed,
    SessionOpened,
    Step,
    StepResult,
    check_hidden,
    check_open_session,
)
from swarmnode.protocol.signing import sign_result
from swarmnode.protocol.validation import check_lengths
from swarmnode.trust.receipts import ReceiptError, countersign

if TYPE_CHECKING:  # the node imports this module; handlers only use the node they are given
    from swarmnode.server.node import Node

log = logging.getLogger("swarmnode.node")

Handler = Callable[["Node", Any, object], Awaitable[Message]]
"""``handler(node, request, owner) -> reply``."""


async def info(node: Node, msg: Info, owner: object) -> InfoReply:
    """Spec §4: what the node serves and how busy it is."""
    return node.info(msg.id)


async def open_session(node: Node, msg: OpenSession, owner: object) -> SessionOpened:
    """Spec §4.1: reserve ``max_length`` tokens of cache for a new session of ``owner`` (a row: its first step sets
    how many)."""
    if node.state == "draining":  # §4.8: it still serves the sessions it has, but takes no new ones
        raise ProtocolError("out_of_cache", "this node is draining (about to move): open the session elsewhere")
    check_open_session(msg, node.limits)
    if msg.dtype not in DTYPE_SIZES:
        raise ProtocolError("bad_dtype", f"dtype {msg.dtype!r} not allowed")
    if msg.max_length > node.max_session_length:
        raise ProtocolError("bad_field", f"max_length {msg.max_length} exceeds this node's {node.max_session_length}")
    _check_connection_share(node, msg, owner)
    state = node.pool.open(msg.session_id, msg.max_length, node.backend.new_cache(), owner)
    state.prefix_salt = msg.prefix_salt
    node.scheduler.opened(state.cache)
    if msg.push_key:  # §7.1: only a session opened with a key ever accepts pushed steps
        node.push.register(msg.session_id, msg.push_key, owner)
    return SessionOpened(id=msg.id, session_id=msg.session_id, cache_tokens_left=node.pool.tokens_left)


def _check_connection_share(node: Node, msg: OpenSession, owner: object) -> None:
    """Spec §6.5: one connection may not hold every session or the whole KV budget (others must still be served).

    Its first session may take whatever is free, so one long context still fits on a quiet node.

    Raises:
        ProtocolError: ``too_many_sessions`` or ``out_of_cache`` (the connection's share is used up).
    """
    cfg = node.config
    held = [s.reserved for s in node.pool.sessions.values() if s.owner is owner]
    if cfg.max_sessions_per_connection > 0 and len(held) >= cfg.max_sessions_per_connection:
        raise ProtocolError(
            "too_many_sessions",
            f"this connection already has {len(held)} open sessions (the node's cap): close one or use another node",
        )
    _check_share(node, held, msg.max_length)


def _check_share(node: Node, held: list[int], wanted: int) -> None:
    """Refuse ``wanted`` more cache tokens to a connection whose other sessions hold ``held`` (§6.5).

    Raises:
        ProtocolError: ``out_of_cache``.
    """
    share = int(node.config.connection_cache_share * node.pool.budget_tokens)
    if held and sum(held) + wanted > share:
        raise ProtocolError(
            "out_of_cache",
            f"this connection's sessions hold {sum(held)} of the {share} cache tokens one connection may use",
        )


def _reserve_rows(node: Node, state: Any, rows: int, owner: object) -> None:
    """A session's first step sets its rows; each row holds ``max_length`` tokens of the budget (spec §4.1, §6.5).

    Raises:
        ProtocolError: ``out_of_cache`` (the budget or the connection's share), ``bad_shape`` (rows changed).
    """
    if rows == state.rows:
        return
    if not state.position:  # a later step's row change is refused by the pool, whatever the share
        others = [s.reserved for s in node.pool.sessions.values() if s.owner is owner and s is not state]
        _check_share(node, others, rows * state.max_length)
    node.pool.set_rows(state, rows)


async def step(node: Node, msg: Step, owner: object) -> StepResult:
    """Spec §4.2: run ``T`` new positions of the session through the span, appending to its cache.

    A step refused here changes nothing (§4.3); one that fails in the backend raises on, and the
    node closes the session.
    """
    state = node.pool.get(msg.session_id, owner)
    hidden = check_hidden(msg.hidden, node.hidden_size, node.limits)
    if state.busy:  # pushed steps run concurrently (spec §7): one step per session at a time
        raise ProtocolError("bad_position", f"step at position {msg.position} while another step of the session runs")
    if msg.position != state.position:
        raise ProtocolError(
            "bad_position", f"step at position {msg.position} but the session's cache holds {state.position}"
        )
    new_len = state.position + hidden.shape[1]
    if new_len > state.max_length:
        raise ProtocolError(
            "session_full", f"{new_len} tokens would exceed the session's max_length {state.max_length}"
        )
    _reserve_rows(node, state, hidden.shape[0], owner)
    started = time.perf_counter()
    state.busy = True
    try:
        out, cached = await node.prefixes.step(state, hidden)
    finally:
        state.busy = False
    if node.corruptor is not None:  # test/demo only: signed as usual, so audits can catch it
        out = node.corruptor.maybe_perturb(out)
    state.position = new_len
    state.served_tokens += hidden.shape[0] * hidden.shape[1]  # B x T (spec §8.2)
    compute_us = int((time.perf_counter() - started) * 1e6)
    # Signing costs ~0.1-0.3 ms a hop: only for clients that check signatures (audits, §11.2).
    span = (node.start, node.end)
    signature = (
        ""
        if msg.skip_signature
        else sign_result(node.identity, "step", msg.session_id, msg.position, span, hidden, out)
    )
    return StepResult(
        id=msg.id,
        session_id=msg.session_id,
        position=new_len,
        hidden=out,
        compute_us=compute_us,
        signature=signature,
        cached_tokens=cached,
    )


async def forward(node: Node, msg: Forward, owner: object) -> ForwardResult:
    """Spec §4.4: run positions ``0..T-1`` without any cache; always signed (§11.2)."""
    hidden = check_hidden(msg.hidden, node.hidden_size, node.limits)
    cap = node.config.max_forward_tokens
    if cap > 0 and hidden.shape[0] * hidden.shape[1] > cap:  # §6.5: a forward holds no cache, but costs compute
        raise ProtocolError(
            "too_many_tokens",
            f"a forward of {hidden.shape[0]} x {hidden.shape[1]} positions exceeds this node's {cap}: split it",
        )
    _check_encoder_forward(node, msg, hidden)
    started = time.perf_counter()
    out = await node.scheduler.forward(hidden, msg.lengths)
    compute_us = int((time.perf_counter() - started) * 1e6)
    lengths = "lengths:" + ",".join(map(str, msg.lengths)) if msg.lengths else ""  # §11.1: the mask is signed too
    signature = sign_result(node.identity, "forward", lengths, 0, (node.start, node.end), hidden, out)
    return ForwardResult(id=msg.id, hidden=out, compute_us=compute_us, signature=signature)


def _check_encoder_forward(node: Node, msg: Forward, hidden) -> None:
    """§4.4: ``lengths`` only for an encoder span, one per row; an encoder's positions within its model's."""
    check_lengths(msg.lengths, hidden)
    encoder = bool(getattr(getattr(node.backend, "span", None), "cache_less", False))
    if msg.lengths and not encoder:
        raise ProtocolError("bad_field", "lengths (padded rows) are for encoder-only models: this is a decoder")
    if encoder and hidden.shape[1] > node.max_session_length:  # learned positions end there
        raise ProtocolError(
            "too_many_tokens", f"{hidden.shape[1]} positions exceed this encoder's {node.max_session_length}"
        )


async def close_session(node: Node, msg: CloseSession, owner: object) -> SessionClosed:
    """Spec §4 and §8: close a session of ``owner``, keep it for prefix reuse (§4.9), countersign its receipt."""
    state = node.pool.get(msg.session_id, owner)
    served = state.served_tokens
    node.prefixes.keep(state)  # before the pool frees its cache
    node.pool.close(msg.session_id)
    signature, why = _countersign(node, msg, served) if msg.receipt else ("", "")
    return SessionClosed(
        id=msg.id, session_id=msg.session_id, tokens=served, node_signature=signature, receipt_error=why
    )


def _countersign(node: Node, msg: CloseSession, served: int) -> tuple[str, str]:
    """Spec §8.3: ``(node_signature, "")`` for a receipt this node stands by, else ``("", why)``.

    A receipt it signs also goes to the portal (§8.4) when the node reports to one.
    """
    try:
        signed = countersign(
            node.identity,
            msg.receipt,
            msg.client_signature,
            session_id=msg.session_id,
            model=node.model_name,
            start_block=node.start,
            end_block=node.end,
            served=served,
        )
    except ReceiptError as exc:  # the client still gets its session closed, with the reason
        log.info("not countersigning the receipt of session %s: %s", msg.session_id, exc)
        return "", str(exc)
    if node.receipts is not None:
        node.receipts.put(signed)
    return signed.node_signature, ""


# Exact types: decoding builds exactly these classes; replies sent as requests find no handler (§4.6).
HANDLERS: Mapping[type[Message], Handler] = MappingProxyType(
    {
        Info: info,
        OpenSession: open_session,
        Step: step,
        Forward: forward,
        CloseSession: close_session,
    }
)
"""The handler of each request type."""
