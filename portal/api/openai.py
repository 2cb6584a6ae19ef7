"""The OpenAI-compatible API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Any OpenAI SDK pointed at ``base_url=<portal>/v1`` with a Layerswarm API key works unchanged:
streaming answers are server-sent events (``data: {chunk}`` ... ``data: [DONE]``), errors are
``{"error": {"message", "type", "param", "code"}}`` with the usual statuses (400 bad parameters or
context too long, 401 bad key, 402 out of credits, 404 unknown model, 429 too many generations at once,
503 the swarm does not cover the model or no gateway answers). The answers come from the same gateway as
the chat page, which charges every token it generates, also for a client that leaves mid-stream.
"""

from __future__ import annotations

import json
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from portal import generation
from portal.accounts.models import ApiKey
from portal.generation import BadRequest, GatewayCall, GatewayTimeout, GenerationRequest, Requester
from portal.swarm.health import swarm_health

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
               404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 502: "server_error", 503: "service_unavailable"}  # fmt: skip
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


class ApiError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param

    def response(self) -> JsonResponse:
        """``{"error": {...}}`` with the status."""
        body = {"message": str(self), "type": ERROR_TYPES.get(self.status, "api_error"), "param": self.param,
                "code": self.code}  # fmt: skip
        headers = {"WWW-Authenticate": 'Bearer realm="layerswarm"'} if self.status == 401 else None
        return JsonResponse({"error": body}, status=self.status, headers=headers)


def _api(methods: tuple[str, ...]):
    """Wrap an async view: CSRF-exempt (bearer auth), method check, API key, ApiError -> response."""

    def wrap(view):
        @csrf_exempt
        async def handler(request, *args, **kwargs):
            try:
                if request.method not in methods:
                    raise ApiError(405, f"use {' or '.join(methods)}", "method_not_allowed")
                request.api_user = await _authenticate(request.headers.get("Authorization", ""))
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        handler.__name__ = view.__name__
        handler.__doc__ = view.__doc__
        return handler

    return wrap


@sync_to_async
def _authenticate(header: str):
    scheme, _, plain = header.partition(" ")
    if scheme.lower() != "bearer" or not plain.strip():
        raise ApiError(401, "missing API key: send 'Authorization: Bearer lsk_...' (create one on your profile)",
                       "invalid_api_key")  # fmt: skip
    key = ApiKey.authenticate(plain.strip())
    if key is None or not key.user.is_active:
        raise ApiError(401, "invalid, revoked or expired API key", "invalid_api_key")
    return key.user


def _body(request) -> dict:
    limit = settings.API_MAX_JSON_BYTES
    if len(request.body) > limit:
        raise ApiError(413, f"request body exceeds the {limit}-byte limit", "payload_too_large")
    try:
        body = json.loads(request.body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body must be a JSON object: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_json")
    return body


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


@_api(("GET",))
async def models(request):
    """``GET /v1/models``: the swarm's models (``covered``: every block has an online node now)."""
    health = await sync_to_async(swarm_health)()
    data = [{"id": m["model"], "object": "model", "created": 0, "owned_by": "layerswarm", "covered": m["covered"]}
            for m in health["models"]]  # fmt: skip
    return JsonResponse({"object": "list", "data": data})


@_api(("POST",))
async def chat_completions(request):
    """``POST /v1/chat/completions``: answer a conversation (``messages``) with the model's chat template."""
    body = _body(request)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ApiError(400, "messages must be a list of {role, content}", "invalid_value", "messages")
    return await _complete(request, body, messages=[_message(m, i) for i, m in enumerate(messages)], chat=True)


@_api(("POST",))
async def completions(request):
    """``POST /v1/completions``: continue a raw ``prompt`` (no chat template)."""
    body = _body(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", "invalid_value", "prompt")
    return await _complete(request, body, prompt=prompt, chat=False)


def _message(m, i: int) -> dict:
    if not isinstance(m, dict):
        raise ApiError(400, f"messages[{i}] must be an object", "invalid_value", "messages")
    role = {"developer": "system"}.get(m.get("role"), m.get("role"))
    content = m.get("content")
    if isinstance(content, list):  # content parts: only text is understood
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"messages[{i}].content: only text parts are supported", "invalid_value", "messages")
        content = "".join(p["text"] for p in content)
    return {"role": role, "content": content}


def _request(body: dict, **prompt) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (GET /v1/models lists them)", "invalid_value", "model")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", "invalid_value", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise ApiError(400, f"{name} is not supported", "invalid_value", name)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    try:
        return GenerationRequest(
            model=model,
            max_new_tokens=settings.CHAT_DEFAULT_MAX_NEW_TOKENS if max_tokens is None else max_tokens,
            temperature=1.0 if body.get("temperature") is None else body["temperature"],
            top_p=1.0 if body.get("top_p") is None else body["top_p"],
            seed=body.get("seed"),
            stop=body.get("stop") or [],
            **prompt,
        )
    except BadRequest as exc:
        raise ApiError(exc.status, str(exc), exc.code, exc.param) from None


@sync_to_async
def _admit(user, request: GenerationRequest, ip: str) -> None:
    try:
        generation.admit(Requester(user.pk), request, ip)
    except generation.UnknownModel:
        raise ApiError(404, f"the model {request.model!r} does not exist (GET /v1/models lists them)",
                       "model_not_found", "model") from None  # fmt: skip
    except generation.OutOfCredits as exc:
        raise ApiError(402, str(exc), "insufficient_quota") from None
    except BadRequest as exc:  # too_many_generations (429)
        raise ApiError(exc.status, str(exc), exc.code, exc.param) from None


async def _complete(request, body: dict, *, chat: bool, **prompt):
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "invalid_value", "stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    gen = _request(body, **prompt)
    ip = request.META.get("REMOTE_ADDR", "")
    await _admit(request.api_user, gen, ip)
    shape = _Shape(chat, gen.model, gen.id)
    call = GatewayCall(gen)
    await call.open()
    try:
        first = await _first(call)  # the status code depends on it: refusals come before any text
    except BaseException:
        await call.close()
        raise
    if not stream:
        try:
            done = await _rest(call, first)  # the gateway charged the usage before it said done
        finally:
            await call.close()
        return JsonResponse(shape.whole(done))

    async def events():
        try:
            yield shape.sse(shape.chunk(role=True))
            event = first
            while event["type"] != "gateway.done":
                if event["type"] == "gateway.token":
                    yield shape.sse(shape.chunk(text=event.get("text", "")))
                elif event["type"] == "gateway.error":
                    yield shape.sse({"error": _error_body(event)})
                    return
                event = await call.next_event()
            yield shape.sse(shape.chunk(finish=FINISH.get(event.get("finish_reason"), "stop")))
            if include_usage:
                yield shape.sse(shape.chunk(usage=event.get("usage")))
            yield b"data: [DONE]\n\n"
        except GatewayTimeout as exc:
            await call.give_up()
            yield shape.sse({"error": {"message": str(exc), "type": "service_unavailable", "param": None,
                                       "code": "gateway_unavailable"}})  # fmt: skip
        finally:
            await call.close()  # a client that went away mid-stream cancels the generation

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
    return response


async def _first(call: GatewayCall) -> dict:
    try:
        event = await call.next_event()
    except GatewayTimeout as exc:
        await call.give_up()
        raise ApiError(503, str(exc), "gateway_unavailable") from None
    if event["type"] == "gateway.error":
        raise ApiError(int(event.get("status") or 502), event.get("message", "failed"), event.get("code"),
                       _param(event.get("param")))  # fmt: skip
    return event


async def _rest(call: GatewayCall, event: dict) -> dict:
    try:
        while event["type"] != "gateway.done":
            if event["type"] == "gateway.error":
                raise ApiError(int(event.get("status") or 502), event.get("message", "failed"), event.get("code"))
            event = await call.next_event()
    except GatewayTimeout as exc:
        await call.give_up()
        raise ApiError(503, str(exc), "gateway_unavailable") from None
    return event


def _param(name: str | None) -> str | None:
    return {"max_tokens": "max_tokens"}.get(name, name)


def _error_body(event: dict) -> dict:
    status = int(event.get("status") or 502)
    return {"message": event.get("message", "failed"), "type": ERROR_TYPES.get(status, "api_error"),
            "param": event.get("param"), "code": event.get("code")}  # fmt: skip


class _Shape:
    """OpenAI's response objects for one request (chat or text completion)."""

    def __init__(self, chat: bool, model: str, request_id: str) -> None:
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        self.created = int(time.time())

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "layerswarm"}  # fmt: skip

    def whole(self, done: dict) -> dict:
        """The non-streaming response."""
        finish = FINISH.get(done.get("finish_reason"), "stop")
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": done.get("text", "")},
                      "logprobs": None, "finish_reason": finish}  # fmt: skip
            return {**self._base("chat.completion"), "choices": [choice], "usage": done.get("usage")}
        choice = {"index": 0, "text": done.get("text", ""), "logprobs": None, "finish_reason": finish}
        return {**self._base("text_completion"), "choices": [choice], "usage": done.get("usage")}

    def chunk(self, text: str = "", role: bool = False, finish: str | None = None, usage: dict | None = None) -> dict:
        """One streamed chunk (the first carries the role; a usage chunk has no choices)."""
        if usage is not None:
            return {**self._base("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                    "usage": usage}  # fmt: skip
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if not finish else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._base("text_completion"), "choices": [choice]}

    @staticmethod
    def sse(payload: dict) -> bytes:
        """A server-sent event."""
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def not_found(request, *args, **kwargs) -> HttpResponse:
    """Unknown ``/v1/...`` paths get an OpenAI-shaped 404."""
    return ApiError(404, f"unknown endpoint {request.path}", "unknown_url").response()
