"""Attacks on what an answer costs, through the chat websocket and a real 3-node swarm: leaving mid-answer
must not make the answer free, and a gateway that dies mid-answer must not hang the page or lose the answer."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore

from portal.chat.models import Message
from portal.generation import Gateway, shared_pool
from portal.ledger.books import balance_of, deposit
from portal.ledger.spending import anonymous_tokens_left
from swarmnode.testing.polling import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.model,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="embedded gateway: the in-memory channel layer only"),
]
# SmolLM2 answers this with 400+ tokens at temperature 0 (checked against local transformers); "Count from one to
# five hundred." gets a 19-token answer, which ended before the dead-gateway test's freeze on a quiet machine.
LONG = {
    "type": "send",
    "content": "Write a long story about a dragon who learns to fly.",
    "settings": {"max_new_tokens": 400},
}


def _reservation():
    return apps.get_model("chat", "Reservation").objects.get()


async def _tokens(ws, n: int) -> list[dict]:
    """Read until ``n`` token messages came; return them."""
    tokens = []
    while len(tokens) < n:
        message = await ws.receive_json_from(timeout=60)
        assert message["type"] != "error", message
        if message["type"] == "token":
            tokens.append(message)
    return tokens


@pytest.mark.parametrize("who", ["anonymous", "user"])
def test_it_charges_every_generated_token_when_the_socket_drops_mid_answer(
    who, owner, smollm2, embedded_gateway, chat_socket, settings
):
    settings.LEDGER_ANONYMOUS_QUOTA_TOKENS = 2000
    session = SessionStore()
    session.create()
    ws = chat_socket(owner) if who == "user" else chat_socket(session_key=session.session_key)
    before = balance_of(owner)

    async def attack():
        await ws.connect()
        await ws.send_json_to(LONG)
        tokens = await _tokens(ws, 12)
        await ws.disconnect()  # the attacker read 12 pieces and leaves: before the fix, nothing was charged
        return tokens

    tokens = async_to_sync(attack)()
    wait_until(lambda: _reservation().state == "settled", 10, "the gateway to settle the dropped answer")
    used = _reservation().used
    assert used > 12 + 10  # the prompt and at least the tokens shown were generated
    assert used < _reservation().tokens  # it did stop: not the whole 400-token answer
    if who == "user":
        assert before - balance_of(owner) == used * settings.LEDGER_CREDITS_PER_TOKEN  # exactly what was generated
    else:
        assert anonymous_tokens_left(session.session_key) == 2000 - used
        if ip := _reservation().ip:  # the test communicator may have no client address
            assert anonymous_tokens_left(f"ip:{ip}") == 2000 - used
    assert len(tokens) == 12


class _FrozenGateway(Gateway):
    """A real gateway whose link to the channel layer goes dead once ``freeze`` is set (a hung or killed
    process, a cut network): nothing it sends arrives any more, heartbeats included, and it hears no cancel."""

    freeze = False

    async def _serve_control(self) -> None:
        await self.layer.group_add("chat-gateway-control", self.control)
        while True:
            message = await self.layer.receive(self.control)
            if not self.freeze and (event := self.running.get(message.get("id"))) is not None:
                event.set()

    async def _send(self, reply_to: str, kind: str, request_id: str, **fields) -> None:
        if not self.freeze:
            await super()._send(reply_to, kind, request_id, **fields)


def test_it_reports_a_dead_gateway_and_keeps_and_charges_the_partial_answer(
    owner, smollm2, embedded_gateway, chat_socket, settings
):
    settings.CHAT_GATEWAY_EMBEDDED = False  # the test's own gateway, which it can kill
    # A short deadline, but not so short that a loaded machine (three nodes and the gateway's worker on two cores)
    # delays a heartbeat past it and the page hears "gateway unavailable" before the gateway froze.
    settings.CHAT_GATEWAY_HEARTBEAT, settings.CHAT_GATEWAY_DEADLINE = 0.3, 5.0
    # Credits for the whole 400-token answer: the starting grant alone holds ~200 tokens, which a quiet machine
    # generates before the freeze (the answer would end in 'done', not in the dead gateway's error).
    deposit(owner, 1_000_000, "test:dead-gateway")
    before = balance_of(owner)
    ws = chat_socket(owner)

    async def scenario():
        gateway = _FrozenGateway(shared_pool())
        task = asyncio.create_task(gateway.run())
        try:
            await ws.connect()
            await ws.send_json_to({**LONG, "settings": {"max_new_tokens": 400, "temperature": 0}})
            tokens = await _tokens(ws, 8)
            await asyncio.sleep(1.0)  # heartbeats alone must keep the call alive through token gaps
            drained = await _drain(ws)
            early = [m for m in drained if m["type"] in ("error", "done")]
            assert not early, f"the answer ended before the gateway froze: {early}"
            shown = tokens + [m for m in drained if m["type"] == "token"]
            gateway.freeze = True
            error = await ws.receive_json_from(timeout=settings.CHAT_GATEWAY_DEADLINE + 10)
            await ws.disconnect()
            return shown, error
        finally:
            gateway.freeze = False
            task.cancel()  # stops its generation (the nodes close the session)

    shown, error = async_to_sync(scenario)()
    assert error["type"] == "error" and error["code"] == "gateway_unavailable", error
    stored = Message.objects.get(pk=error["answer"]["id"])
    assert stored.role == "assistant" and stored.finish_reason == "error"
    assert stored.content == "".join(m["text"] for m in shown) != ""
    assert stored.completion_tokens >= len(shown)
    reservation = _reservation()
    # Charged what the page saw (or, when the frozen worker finished first, the more it generated).
    assert reservation.state == "settled" and reservation.used >= stored.prompt_tokens + stored.completion_tokens
    assert before - balance_of(owner) == reservation.used * settings.LEDGER_CREDITS_PER_TOKEN


async def _drain(ws) -> list[dict]:
    out = []
    while not await ws.receive_nothing(timeout=0.05):
        out.append(await ws.receive_json_from())
    return out
