"""Before a request goes to a gateway: the model exists, the requester can pay, the prompt cache is salted."""

from __future__ import annotations

from portal.generation.protocol import BadRequest, GenerationRequest
from portal.generation.requesters import Requester
from portal.generation.reservations import reserve


class UnknownModel(BadRequest):
    """The tracker lists no model of that name (404)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"unknown model {model!r}", "model", "model_not_found", 404)
        self.model = model


def admit(requester: Requester, request: GenerationRequest, ip: str) -> None:
    """Make ``request`` ready to send for ``requester``: its prompt-prefix salt, and the credits or quota it
    may use held for it (its ``token_budget`` and ``reservation``: call with the request's final messages).

    Runs in a sync context (database access): callers in async code wrap it in ``sync_to_async``.

    Raises:
        UnknownModel: no such model in the tracker.
        OutOfCredits: the requester cannot pay for a single token (beyond what its running generations hold).
        TooManyGenerations: the requester or its address already runs its limit of generations (429).
    """
    from portal.swarm.models import SwarmModel

    if not SwarmModel.objects.filter(name=request.model).exists():
        raise UnknownModel(request.model)
    request.prefix_salt = requester.prefix_salt
    reserve(requester, ip, request)
