"""Checks that need the node's context (hidden size, limits) but still no torch (spec §6)."""

from __future__ import annotations

from swarmnode.protocol.errors import ProtocolError
from swarmnode.protocol.messages import Limits, OpenSession
from swarmnode.protocol.tensors import WireTensor, all_finite

MAX_SALT_CHARS = 128  # OpenSession.prefix_salt (§4.9)


def check_hidden(tensor: WireTensor | None, hidden_size: int, limits: Limits) -> WireTensor:
    """Check a hidden-state tensor sent to a span: shape ``(B, T, hidden_size)``, finite values.

    Raises:
        ProtocolError: ``missing_tensor``, ``bad_shape``, ``wrong_hidden_size``,
            ``too_many_tokens``, ``batch_too_large`` or ``not_finite``.
    """
    if tensor is None:
        raise ProtocolError("missing_tensor", "this message needs a 'hidden' tensor")
    if len(tensor.shape) != 3:
        raise ProtocolError("bad_shape", f"hidden states must be (batch, tokens, hidden), got {list(tensor.shape)}")
    batch, tokens, hidden = tensor.shape
    if hidden != hidden_size:
        raise ProtocolError("wrong_hidden_size", f"hidden size {hidden} does not match the model's {hidden_size}")
    if batch < 1 or tokens < 1:
        raise ProtocolError("bad_shape", "batch and token dimensions must be at least 1")
    if tokens > limits.max_tokens_per_step:
        raise ProtocolError(
            "too_many_tokens", f"{tokens} tokens in one step exceed the limit of {limits.max_tokens_per_step}"
        )
    if batch > limits.max_batch:
        raise ProtocolError("batch_too_large", f"batch of {batch} exceeds the limit of {limits.max_batch}")
    if not all_finite(tensor):
        raise ProtocolError("not_finite", "hidden states contain NaN or infinite values")
    return tensor


def check_lengths(lengths: tuple[int, ...], hidden: WireTensor) -> None:
    """Check a ``forward``'s ``lengths`` (§4.4): empty, or one length per row, each ``1..T``.

    Raises:
        ProtocolError: ``bad_field`` otherwise.
    """
    batch, tokens = hidden.shape[0], hidden.shape[1]
    if lengths and (len(lengths) != batch or not all(1 <= n <= tokens for n in lengths)):
        raise ProtocolError("bad_field", f"lengths must be {batch} integers from 1 to {tokens} (one per row), or empty")


def check_open_session(msg: OpenSession, limits: Limits) -> None:
    """Check an OpenSession request before any cache is reserved.

    Raises:
        ProtocolError: ``bad_field`` for an empty/long session id or a bad ``max_length``.
    """
    if not msg.session_id or len(msg.session_id) > limits.max_session_id_len:
        raise ProtocolError("bad_field", f"session_id must be 1..{limits.max_session_id_len} characters")
    if len(msg.prefix_salt) > MAX_SALT_CHARS:
        raise ProtocolError("bad_field", f"prefix_salt must be at most {MAX_SALT_CHARS} characters")
    if not 1 <= msg.max_length <= limits.max_session_length:
        raise ProtocolError(
            "bad_field", f"max_length must be between 1 and {limits.max_session_length}, got {msg.max_length}"
        )
