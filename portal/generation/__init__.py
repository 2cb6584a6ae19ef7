"""The generation service: answers from the swarm for the chat page and the OpenAI-compatible API.

This package is its public API; ``portal.chat`` and ``portal.api`` import only from here.

Requester side (daphne), in the order a request goes:

1. :class:`GenerationRequest` validates what a browser or an API client may set (:class:`BadRequest`).
2. :func:`admit` checks the model, holds what the request may cost (its token budget, a reservation)
   and gives it the prompt salt (:class:`UnknownModel`, :class:`OutOfCredits`, :class:`TooManyGenerations`).
3. :class:`GatewayCall` sends it to whichever gateway is free and reads the replies
   (``gateway.started``, ``gateway.token``..., ``gateway.done`` or ``gateway.error``); leaving it early
   cancels the generation; :class:`GatewayTimeout` when no gateway answers.
4. The gateway settles the reservation: every token it generated is charged, however the generation
   ended (``reservations.py``); a requester whose gateway died settles with what it saw (``give_up``).

Gateway side (``manage.py run_gateway``, or embedded in daphne: :func:`ensure_embedded_gateway`):
:class:`Gateway` (``gateway.py``: channel layer, slots, cancels, worker threads) runs each request
with ``streaming.serve_request``: ``pool.py`` (the model's client pointed at the online nodes) ->
``prompts.py`` (token ids fitted to the context and budget) -> ``decoding.py`` (the token loop),
replying as it goes.
"""

from portal.generation.admission import UnknownModel, admit
from portal.generation.calls import GatewayCall, GatewayTimeout
from portal.generation.gateway import Gateway, ensure_embedded_gateway
from portal.generation.pool import shared_pool
from portal.generation.protocol import BadRequest, GenerationRequest
from portal.generation.requesters import Requester
from portal.generation.reservations import TooManyGenerations, retry_when_locked
from portal.generation.spending import OutOfCredits, tokens_allowed

__all__ = [
    "BadRequest",
    "Gateway",
    "GatewayCall",
    "GatewayTimeout",
    "GenerationRequest",
    "OutOfCredits",
    "Requester",
    "TooManyGenerations",
    "UnknownModel",
    "admit",
    "ensure_embedded_gateway",
    "retry_when_locked",
    "shared_pool",
    "tokens_allowed",
]
