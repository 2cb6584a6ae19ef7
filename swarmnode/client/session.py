"""An inference session across a chain of nodes, each keeping its part of the KV cache."""

from __future__ import annotations

import uuid

import torch

from swarmnode.client.remote import PeerInfo, RemoteError, RemoteSpan
from swarmnode.protocol import CloseSession, OpenSession, Step, StepResult, all_finite
from swarmnode.runtime.backend import tensor_to_wire, wire_to_tensor


class InferenceSession:
    """Push hidden states through every span of a chain, keeping a cache on each node.

    Args:
        chain: the spans, in block order, covering the whole model.
        max_length: most tokens (prompt + generated) the session will hold.
        wire_dtype: dtype of activations on the wire.
        timeout: seconds to wait for each node's reply.

    Raises:
        RemoteError: a node could not be reached or refused the session (e.g. ``out_of_cache``).
    """

    def __init__(self, chain: list[PeerInfo], max_length: int, wire_dtype: str = "float32", timeout: float = 60.0):
        self.chain = chain
        self.max_length = max_length
        self.wire_dtype = wire_dtype
        self.session_id = uuid.uuid4().hex
        self.position = 0
        self._spans: list[RemoteSpan] = []
        try:
            for peer in chain:
                span = RemoteSpan(peer.url, timeout=timeout)
                self._spans.append(span)
                span.request(OpenSession(session_id=self.session_id, max_length=max_length, dtype=wire_dtype))
        except BaseException:
            self.close()
            raise

    def step(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        """Run new positions through all spans; their keys/values stay in the nodes' caches.

        Raises:
            RemoteError: a node failed, or returned a reply of the wrong shape or with NaNs.
        """
        wire = tensor_to_wire(hidden, self.wire_dtype)
        for span in self._spans:
            reply = span.request(Step(session_id=self.session_id, position=self.position, hidden=wire))
            out = reply.hidden if isinstance(reply, StepResult) else None
            if out is None or out.shape != wire.shape:
                raise RemoteError(span.url, "bad_reply", "step result missing or of the wrong shape")
            if not all_finite(out):
                raise RemoteError(span.url, "bad_reply", "step result contains NaN or infinite values")
            wire = out
        self.position += hidden.shape[1]
        return wire_to_tensor(wire, hidden.dtype)

    def close(self) -> None:
        """Close the session on every node (freeing their caches) and the connections."""
        for span in self._spans:
            try:
                span.request(CloseSession(session_id=self.session_id), timeout=5.0)
            except RemoteError:
                pass
            span.close()
        self._spans = []

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
