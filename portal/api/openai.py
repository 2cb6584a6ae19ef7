"""The OpenAI-compatible API: ``/v1/models``, ``/v1/models/{id}``, ``/v1/chat/completions``, ``/v1/completions``.

Any OpenAI SDK pointed at ``base_url=<portal>/v1`` with a Layerswarm API key works unchanged:
streaming answers are server-sent events (``data: {chunk}`` ... ``data: [DONE]``), errors are
``{"error": {"message", "type", "param", "code"}}`` with the usual statuses (400 bad parameters or
context too long, 401 bad key, 402 out of credits, 404 unknown model, 429 too many generations at once,
503 the swarm does not cover the model or no gateway answers). The answers come from the same gateway as
the chat page, which charges every token it generates, also for a client that leaves mid-stream.

Conformance: ``logprobs``/``top_logprobs`` are the model's own (before temperature, see
:mod:`portal.generation.logprobs`); ``max_tokens`` defaults to the room the prompt leaves in the context;
fields this server does not implement (``tools``, ``response_format`` other than text, ``n`` > 1, audio ...)
are refused with a 400 naming them rather than silently ignored. Browsers may call it from the origins
in ``OPENAI_CORS_ALLOWED_ORIGINS`` (bearer keys only: no cookies are honoured).
"""

from __future__ import annotations

import json
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from portal import generation
from portal.accounts.models import ApiKey
from portal.api.openai_shapes import FINISH, Shape
from portal.generation import BadRequest, GatewayCall, GatewayTimeout, GenerationRequest, Requester
from portal.swarm.health import swarm_health

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
               404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 502: "server_error", 503: "service_unavailable"}  # fmt: skip
HEADER_NAMES = re.compile(r"[A-Za-z0-9-]{1,64}")  # what a CORS preflight may name (nothing else is echoed)
ASSUMED_CONTEXT_TOKENS = 8192  # the body limit's context when CHAT_CONTEXT_TOKENS is 0 (SmolLM2's)
# Request fields OpenAI has and this server does not implement: refused (400, naming the field) unless the value
# asks for nothing more than the default; every other unknown field is ignored, as clients send extras.
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "audio": "audio output",
    "prediction": "predicted outputs", "web_search_options": "web search", "logit_bias": "logit_bias",
    "reasoning_effort": "reasoning effort", "suffix": "suffix (insertion)",
}  # fmt: skip


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


def openai_view(methods: tuple[str, ...]):
    """Wrap an async view: CSRF-exempt (bearer auth), CORS, method check, API key, ApiError -> response."""

    def wrap(view):
        @csrf_exempt
        async def handler(request, *args, **kwargs):
            if request.method == "OPTIONS":  # a browser's preflight: no key comes with it
                return _cors(request, HttpResponse(status=204, headers={"Allow": ", ".join((*methods, "OPTIONS"))}),
                             methods, preflight=True)  # fmt: skip
            try:
                if request.method not in methods:
                    raise ApiError(405, f"use {' or '.join(methods)}", "method_not_allowed")
                request.api_user = await _authenticate(request.headers.get("Authorization", ""))
                response = await view(request, *args, **kwargs)
            except ApiError as exc:
                response = exc.response()
            return _cors(request, response, methods)

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


def _cors(request, response: HttpResponse, methods: tuple[str, ...], preflight: bool = False) -> HttpResponse:
    """Let a browser page from an allowed origin read ``response`` (``OPENAI_CORS_ALLOWED_ORIGINS``; ``*``: any).

    Credentials (cookies) are never allowed: the API authenticates by bearer key only.
    """
    origin = request.headers.get("Origin")
    allowed = settings.OPENAI_CORS_ALLOWED_ORIGINS
    response["Vary"] = "Origin"
    if not origin or not ("*" in allowed or origin in allowed):
        return response
    response["Access-Control-Allow-Origin"] = origin if origin in allowed else "*"
    if preflight:
        response["Access-Control-Allow-Methods"] = ", ".join((*methods, "OPTIONS"))
        # SDKs send their own headers (x-stainless-*): allow the header names the browser says the request carries.
        asked = HEADER_NAMES.findall(request.headers.get("Access-Control-Request-Headers", "")[:2048])
        response["Access-Control-Allow-Headers"] = ", ".join(asked) or "Authorization, Content-Type"
        response["Access-Control-Max-Age"] = "600"
    return response


def body_limit() -> int:
    """Bytes a ``/v1`` body may have: the context's tokens times ``OPENAI_BYTES_PER_TOKEN`` (JSON escapes of
    non-ASCII text take up to 12 bytes a character), never below ``API_MAX_JSON_BYTES``."""
    context = settings.CHAT_CONTEXT_TOKENS if settings.CHAT_CONTEXT_TOKENS > 0 else ASSUMED_CONTEXT_TOKENS
    return max(settings.API_MAX_JSON_BYTES, context * settings.OPENAI_BYTES_PER_TOKEN)


def json_body(request) -> dict:
    """The request's JSON object, within the body limit (413), strict JSON (no NaN/Infinity), else a 400."""
    limit = body_limit()
    declared = request.META.get("CONTENT_LENGTH") or ""
    if (declared.isdigit() and int(declared) > limit) or len(request.body) > limit:
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


@openai_view(("GET",))
async def models(request):
    """``GET /v1/models``: the catalogued models (``covered``: every block has an online node now; ``kind``:
    ``chat``, ``completion`` (``/v1/completions`` only) or ``embedding``)."""
    health = await sync_to_async(swarm_health)()
    data = [{"id": m["model"], "object": "model", "created": 0, "owned_by": "layerswarm", "covered": m["covered"],
             "kind": m["kind"]} for m in health["models"]]  # fmt: skip
    return JsonResponse({"object": "list", "data": data})


@openai_view(("GET",))
async def model(request, model_id: str):
    """``GET /v1/models/{id}``: one of the swarm's models (404 if the tracker does not know it)."""
    health = await sync_to_async(swarm_health)()
    for m in health["models"]:
        if m["model"] == model_id:
            return JsonResponse({"id": m["model"], "object": "model", "created": 0, "owned_by": "layerswarm",
                                 "covered": m["covered"], "kind": m["kind"]})  # fmt: skip
    raise ApiError(404, f"the model {model_id!r} does not exist (GET /v1/models lists them)", "model_not_found",
                   "model")  # fmt: skip


@openai_view(("POST",))
async def chat_completions(request):
    """``POST /v1/chat/completions``: answer a conversation (``messages``) with the model's chat template."""
    body = json_body(request)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ApiError(400, "messages must be a list of {role, content}", "invalid_value", "messages")
    _refuse_unsupported(body, chat=True)
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is None:
        logprobs = False
    if top is None:
        top = 0
    prompt = {"messages": [_message(m, i) for i, m in enumerate(messages)]}
    return await _complete(request, body, prompt, chat=True, logprobs=logprobs, top=top)


@openai_view(("POST",))
async def completions(request):
    """``POST /v1/completions``: continue a raw ``prompt`` (no chat template)."""
    body = json_body(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", "invalid_value", "prompt")
    _refuse_unsupported(body, chat=False)
    logprobs = body.get("logprobs")  # legacy: an integer, the alternatives per position (0 to 5)
    if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= 5):
        raise ApiError(400, "logprobs must be an integer from 0 to 5 (or null)", "invalid_value", "logprobs")
    return await _complete(request, body, {"prompt": prompt}, chat=False, logprobs=logprobs is not None,
                           top=logprobs or 0)  # fmt: skip


def _refuse_unsupported(body: dict, chat: bool) -> None:
    """A 400 naming the first field that asks for something this server does not do."""
    for name, what in UNSUPPORTED.items():
        if body.get(name) not in (None, False, [], {}, "none", "auto"):  # "auto"/"none" choose among no tools
            raise ApiError(400, f"{name}: {what} is not supported by this server", "unsupported_parameter", name)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ApiError(400, "response_format: only {'type': 'text'} is supported (no JSON mode or schemas)",
                       "unsupported_parameter", "response_format")  # fmt: skip
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise ApiError(400, "modalities: only ['text'] is supported", "unsupported_parameter", "modalities")
    if not chat:
        if body.get("echo") not in (None, False):
            raise ApiError(400, "echo is not supported", "unsupported_parameter", "echo")
        if body.get("best_of") not in (None, 1):
            raise ApiError(400, "best_of: only 1 is supported", "unsupported_parameter", "best_of")


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


def _request(body: dict, prompt: dict, logprobs, top) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (GET /v1/models lists them)", "invalid_value", "model")
    n = body.get("n")
    if n is not None and (n != 1 or isinstance(n, bool)):
        raise ApiError(400, "only n=1 is supported", "invalid_value", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise ApiError(400, f"{name} is not supported", "invalid_value", name)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    try:
        return GenerationRequest(
            model=model,
            max_new_tokens=max_tokens,  # None: the room the prompt leaves in the context
            temperature=1.0 if body.get("temperature") is None else body["temperature"],
            top_p=1.0 if body.get("top_p") is None else body["top_p"],
            seed=body.get("seed"),
            stop=body.get("stop") or [],
            logprobs=logprobs,
            top_logprobs=top,
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


async def _complete(request, body: dict, prompt: dict, *, chat: bool, logprobs, top):
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "invalid_value", "stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    gen = _request(body, prompt, logprobs, top)
    ip = request.META.get("REMOTE_ADDR", "")
    await _admit(request.api_user, gen, ip)
    shape = Shape(chat, gen.model, gen.id, gen.logprobs, len(gen.prompt or ""))
    call = GatewayCall(gen)
    await call.open()
    try:
        first = await _first(call)  # the status code depends on it: refusals come before any text
    except BaseException:
        await call.close()
        raise
    if not stream:
        try:
            entries: list[dict] = []
            done = await _rest(call, first, entries)  # the gateway charged the usage before it said done
        finally:
            await call.close()
        return JsonResponse(shape.whole(done, entries))

    async def events():
        try:
            yield shape.sse(shape.chunk(role=True))
            event = first
            while event["type"] != "gateway.done":
                if event["type"] == "gateway.token":
                    yield shape.sse(shape.chunk(text=event.get("text", ""), entries=event.get("logprobs")))
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


async def _rest(call: GatewayCall, event: dict, entries: list[dict]) -> dict:
    try:
        while event["type"] != "gateway.done":
            if event["type"] == "gateway.token":
                entries.extend(event.get("logprobs") or [])
            elif event["type"] == "gateway.error":
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


def not_found(request, *args, **kwargs) -> HttpResponse:
    """Unknown ``/v1/...`` paths get an OpenAI-shaped 404."""
    return ApiError(404, f"unknown endpoint {request.path}", "unknown_url").response()
