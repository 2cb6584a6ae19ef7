"""Embeddings from the swarm: encoder-only models (all-MiniLM-L6-v2) for ``POST /v1/embeddings``.

An embedding request is one cache-less pass per batch through the encoder's nodes, so it needs no gateway
slot or token stream: the API process runs it in a worker thread with its own :class:`EmbeddingPool` (one
client per model, routing only over trusted nodes pinned to their registered keys, as the gateway does).
In the order a request goes:

1. :class:`EmbeddingRequest` checks what a client sent (``input``: a string or a list of up to
   :data:`MAX_INPUTS` strings; ``encoding_format``; ``dimensions``) (:class:`BadRequest`).
2. :func:`check_model`: the catalogue holds the model and it is an embedding model (404 / 400).
3. :func:`prepare`: the pool's client counts each input's tokens (400 when one is longer than the model
   takes, or all of them more than :data:`MAX_TOKENS`), then the exact cost is held for the payer
   (:func:`portal.generation.reservations.hold`: 402 when the credits do not pay for it, 429 when the
   payer already runs its limit of requests).
4. :func:`compute`: the swarm embeds the inputs; :func:`finish` charges the held tokens, or nothing when
   the swarm failed (503).
"""

from __future__ import annotations

import base64
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portal.generation.pool import REFRESH_EVERY_S, SwarmUnavailable, catalogued_checkpoint
from portal.generation.protocol import BadRequest
from portal.generation.requesters import Requester
from portal.generation.reservations import hold, settle
from portal.generation.trust import PinnedPeers, TrackedNode, gateway_options, trusted_nodes
from swarmnode.client.embedding import DistributedEncoderModel, InputTooLong

MAX_INPUTS = 256  # strings in one request
MAX_TOKENS = 32768  # tokens of all inputs of one request (the cost of one request's compute on the nodes)
FORMATS = ("float", "base64")


@dataclass
class EmbeddingRequest:
    """A validated ``/v1/embeddings`` body.

    Raises (from :meth:`parse`):
        BadRequest: 400 naming the offending field.
    """

    model: str
    texts: list[str]
    encoding_format: str = "float"
    dimensions: int | None = None
    reservation: str = ""  # held tokens (``prepare``)
    tokens: int = 0
    counts: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, body: dict) -> EmbeddingRequest:
        """Check ``body`` (the request's JSON object)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required (GET /v1/models lists them)", "model", "invalid_value")
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts:
            raise BadRequest(
                "input must be a non-empty string or a non-empty list of strings", "input", "invalid_value"
            )
        if len(texts) > MAX_INPUTS:
            raise BadRequest(f"input holds {len(texts)} items; at most {MAX_INPUTS}", "input", "invalid_value")
        for i, text in enumerate(texts):
            if isinstance(text, list) or isinstance(text, int):
                raise BadRequest("input as token ids is not supported: send text", "input", "unsupported_parameter")
            if not isinstance(text, str) or not text:
                raise BadRequest(f"input[{i}] must be a non-empty string", "input", "invalid_value")
        fmt = body.get("encoding_format")
        fmt = "float" if fmt is None else fmt
        if fmt not in FORMATS:
            raise BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format", "invalid_value")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
            raise BadRequest("dimensions must be a positive integer", "dimensions", "invalid_value")
        return cls(model, list(texts), fmt, dims)


class PinnedEncoderModel(PinnedPeers, DistributedEncoderModel):
    """An encoder client that routes only over the nodes the tracker registered, each at its registered key
    (:class:`portal.generation.trust.PinnedPeers`), re-pinned on every (re)discovery."""


class EmbeddingPool:
    """One :class:`PinnedEncoderModel` per encoder model, loaded on first use, its nodes refreshed as the
    tracker's list changes.

    Args:
        peers_for: model name -> the nodes to route over (default: trusted tracker nodes and ``CHAT_SWARM_PEERS``).
        locate: model name -> its checkpoint directory (default: where the catalogue says).
        timeout: seconds to wait for any node reply.
    """

    def __init__(
        self,
        peers_for: Callable[[str], list[TrackedNode | str]] = trusted_nodes,
        locate: Callable[[str], Path] = catalogued_checkpoint,
        timeout: float = 60.0,
    ) -> None:
        self.peers_for = peers_for
        self.locate = locate
        self.timeout = timeout
        self._models: dict[str, PinnedEncoderModel] = {}
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> PinnedEncoderModel:
        """The client of ``name``, routed over the nodes the tracker lists now.

        Raises:
            BadRequest: no checkpoint of that model here (404), or it is no encoder (400).
            SwarmUnavailable: the nodes do not cover it.
        """
        from swarmnode.client.routing import SwarmNotCovering

        nodes = [TrackedNode(n) if isinstance(n, str) else n for n in self.peers_for(name)]
        if not nodes:
            raise SwarmUnavailable(f"no trusted node serves {name} right now")
        with self._lock:  # loading takes a second or two, once per model and process
            model = self._models.get(name)
            if model is None:
                model = self._models[name] = self._load(name)
            stale = time.monotonic() - self._refreshed.get(name, 0.0) > REFRESH_EVERY_S
            if stale or set(nodes) != set(model.registered):
                model.use(nodes)
                self._refreshed[name] = time.monotonic()
        try:
            model.chain()
        except SwarmNotCovering as exc:
            raise SwarmUnavailable(f"the swarm does not cover {name} right now: {exc}") from None
        return model

    def _load(self, name: str) -> PinnedEncoderModel:
        from swarmnode.client.config import ClientConfig
        from swarmnode.models import Checkpoint
        from swarmnode.models.encoder import is_encoder_only

        try:
            checkpoint = Checkpoint(self.locate(name))
        except BadRequest:
            raise
        except Exception as exc:
            raise BadRequest(f"the portal cannot load model {name!r}: {exc}", "model", "model_not_found", 404) from None
        if not is_encoder_only(checkpoint.config):
            raise BadRequest(f"{name} is not an embedding model", "model", "model_not_embedding")
        config = ClientConfig(timeout=self.timeout, secure=gateway_options()["secure"])
        return PinnedEncoderModel(name, checkpoint, [], config=config)


@functools.cache
def shared_embedding_pool() -> EmbeddingPool:
    """This process's embedding pool (each model's client parts are loaded once per process)."""
    return EmbeddingPool()


def check_model(request: EmbeddingRequest) -> None:
    """The catalogue holds ``request.model`` and it embeds (sync: database access).

    Raises:
        BadRequest: 404 ``model_not_found``; 400 ``model_not_embedding`` for a model that generates text.
    """
    from portal.swarm.models import SwarmModel

    model = SwarmModel.objects.filter(name=request.model).first()
    if model is None:
        raise BadRequest(f"unknown model {request.model!r}", "model", "model_not_found", 404)
    if model.kind != SwarmModel.Kind.EMBEDDING:
        raise BadRequest(
            f"{model.name} is a {model.kind} model: it generates text (use /v1/chat/completions or /v1/completions); "
            "/v1/embeddings needs an embedding model",
            "model",
            "model_not_embedding",
        )


def count(request: EmbeddingRequest, pool: EmbeddingPool) -> DistributedEncoderModel:
    """Count each input's tokens with the model's tokenizer (in a worker thread: the pool may load the model).

    Raises:
        BadRequest: an input is longer than the model takes, or all are more than :data:`MAX_TOKENS`.
        SwarmUnavailable: the nodes do not cover the model.
    """
    client = pool.get(request.model)
    if request.dimensions is not None and request.dimensions != client.dimensions:
        raise BadRequest(
            f"{request.model} gives {client.dimensions} dimensions; shortening is not supported",
            "dimensions",
            "invalid_value",
        )
    request.counts = client.count_tokens(request.texts)
    for i, n in enumerate(request.counts):
        if n > client.max_tokens:
            raise BadRequest(
                f"input[{i}] has {n} tokens; {request.model} takes at most {client.max_tokens}",
                "input",
                "context_length_exceeded",
            )
    request.tokens = sum(request.counts)
    if request.tokens > MAX_TOKENS:
        raise BadRequest(
            f"the inputs hold {request.tokens} tokens; at most {MAX_TOKENS} per request: split them",
            "input",
            "context_length_exceeded",
        )
    return client


def prepare(requester: Requester, ip: str, request: EmbeddingRequest) -> None:
    """Hold the request's exact cost (its tokens) for the payer (sync: database access).

    Raises:
        OutOfCredits: the credits do not pay for it (402). TooManyGenerations: too many requests at once (429).
    """
    request.reservation, _ = hold(requester, ip, request.tokens, exact=True)


def compute(request: EmbeddingRequest, client: DistributedEncoderModel) -> np.ndarray:
    """The embeddings ``(N, H)`` float32 (in a worker thread).

    Raises:
        SwarmUnavailable: the nodes failed (after failing over to others where there are any).
    """
    from swarmnode.client.remote import RemoteError
    from swarmnode.client.routing import SwarmNotCovering

    try:
        return client.embed(request.texts).float().numpy()
    except InputTooLong as exc:  # the nodes take fewer positions than the model
        raise BadRequest(str(exc), "input", "context_length_exceeded") from None
    except (RemoteError, SwarmNotCovering, OSError) as exc:
        raise SwarmUnavailable(f"the swarm could not embed the input: {exc}") from None


def finish(request: EmbeddingRequest, ok: bool) -> int:
    """Charge the held tokens (``ok``), or release the hold; returns the tokens charged (sync: database access)."""
    return settle(request.reservation, request.tokens if ok else 0) if request.reservation else 0


def response(request: EmbeddingRequest, vectors: np.ndarray) -> dict:
    """The OpenAI-shaped body: ``base64`` is the little-endian float32 bytes of each vector."""
    data = []
    for i, vector in enumerate(vectors):
        if request.encoding_format == "base64":
            value: object = base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
        else:
            value = [float(x) for x in vector]
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": request.tokens, "total_tokens": request.tokens}
    return {"object": "list", "data": data, "model": request.model, "usage": usage}
