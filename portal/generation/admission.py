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


def refuse_unsuited(model, request: GenerationRequest) -> None:
    """A 400 for a request the catalogued ``model`` cannot answer: text from an embedding model, or a
    conversation from a model without a chat template (a completion model: ``/v1/completions`` only).

    Raises:
        BadRequest: ``model_not_generative`` or ``model_not_chat`` (400, param ``model``).
    """
    if not model.generates:
        raise BadRequest(
            f"{model.name} is an embedding model: it does not generate text (use /v1/embeddings)",
            "model", "model_not_generative", 400,
        )  # fmt: skip
    if request.messages is not None and not model.chat_capable:
        raise BadRequest(
            f"{model.name} has no chat template: it continues plain prompts (/v1/completions), not conversations",
            "model", "model_not_chat", 400,
        )  # fmt: skip


def admit(requester: Requester, request: GenerationRequest, ip: str) -> None:
    """Make ``request`` ready to send for ``requester``: its prompt-prefix salt, and the credits or quota it
    may use held for it (its ``token_budget`` and ``reservation``: call with the request's final messages).

    Runs in a sync context (database access): callers in async code wrap it in ``sync_to_async``.

    Raises:
        UnknownModel: no such model in the tracker.
        BadRequest: the model cannot answer this kind of request (:func:`refuse_unsuited`).
        OutOfCredits: the requester cannot pay for a single token (beyond what its running generations hold).
        TooManyGenerations: the requester or its address already runs its limit of generations (429).
    """
    from portal.swarm.models import SwarmModel

    model = SwarmModel.objects.filter(name=request.model).only("kind").first()
    if model is None:
        raise UnknownModel(request.model)
    refuse_unsuited(model, request)
    request.prefix_salt = requester.prefix_salt
    reserve(requester, ip, request)
