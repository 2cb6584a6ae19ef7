"""JSON over HTTP with a portal: one bounded, timed exchange through ``httpx``.

Nodes (announcing, posting receipts) and clients (reading the tracker, reporting audits) talk to
a portal with small JSON bodies. Whatever answers at the portal's address may be broken or
hostile, so every exchange here is bounded: a timeout per network operation and a deadline for
the whole exchange, a cap on the reply's size (decompressed), no redirects for requests that carry
a token, and failures folded into a few exception types callers already handle.

The TLS context (the system's CA bundle, loaded and parsed: ~10-40 ms of CPU) is built once per process and
per CA setting, not for every exchange: a node heartbeats every few seconds, and building it each time was
about half of a busy node's CPU in ``bench/chat_concurrency.py``'s profile (#24).
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import time
from typing import Any

import httpx

__all__ = ["MAX_REPLY_BYTES", "PortalHTTPError", "call_json"]

MAX_REPLY_BYTES = 8 * 1024 * 1024  # a tracker's span list for thousands of nodes fits; more is refused
_ERROR_BODY_BYTES = 4096  # what is read of an error reply (its detail and code)


class PortalHTTPError(Exception):
    """The portal answered with an HTTP error status (or a redirect where none is followed).

    Attributes:
        status: the HTTP status.
        detail: the portal's explanation (its ``detail`` field, else the start of its body).
        code: the portal's ``{"error": code}``, when its body has one.
        retry_after: seconds the portal asked to wait (``Retry-After``, clamped to 0..3600).
    """

    def __init__(self, status: int, detail: str, code: str | None = None, retry_after: float = 0.0) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.code = code
        self.retry_after = retry_after


@functools.lru_cache(maxsize=8)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads SSL_CERT_FILE / SSL_CERT_DIR itself: the cache is keyed on them


def tls_context() -> ssl.SSLContext:
    """The verifying TLS context every exchange uses (one per ``SSL_CERT_FILE``/``SSL_CERT_DIR`` setting)."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


def call_json(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    timeout: float = 10.0,
    max_bytes: int = MAX_REPLY_BYTES,
) -> Any:
    """Send ``body`` as JSON (``POST``; ``None``: no body) and return the JSON value the portal answered.

    Args:
        method: ``GET`` or ``POST``.
        url: the full URL.
        token: sent as ``Authorization: Bearer``; requests with one never follow redirects.
        body: a JSON-serialisable value, or ``None``.
        timeout: seconds per network operation (connect, send, each read); the whole exchange gets twice that.
        max_bytes: the largest reply body accepted.

    Returns:
        The decoded JSON value (an empty body reads as ``{}``).

    Raises:
        PortalHTTPError: an HTTP error status.
        OSError: the portal could not be reached, timed out (``TimeoutError``) or broke the exchange off
            (``ConnectionError``: a reset, a malformed status line, a truncated body).
        ValueError: the reply is not JSON, or larger than ``max_bytes``.
    """
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + 2 * timeout
    try:
        with httpx.stream(
            method,
            url,
            json=body if method != "GET" else None,
            headers=headers,
            timeout=timeout,
            follow_redirects=not token,
            verify=tls_context(),
        ) as response:
            if response.status_code >= 300:
                raw = _read(response, _ERROR_BODY_BYTES, deadline, truncate=True)
                raise _http_error(response, raw)
            raw = _read(response, max_bytes, deadline)
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"the portal did not answer in time ({exc})") from None
    except httpx.HTTPError as exc:  # transport and protocol errors, decoding errors, too many redirects
        raise ConnectionError(f"the portal broke off the HTTP exchange ({exc!r})") from None
    return json.loads(raw or b"{}")


def _read(response: httpx.Response, limit: int, deadline: float, truncate: bool = False) -> bytes:
    """Up to ``limit`` bytes of the (decompressed) body; ``ValueError`` beyond it unless ``truncate``."""
    declared = response.headers.get("Content-Length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise ValueError(f"the portal's reply of {declared} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if truncate:
                break
            raise ValueError(f"the portal's reply exceeds {limit} bytes")
        if time.monotonic() > deadline:
            raise TimeoutError("the portal's reply took too long")
    return b"".join(chunks)[:limit]


def _http_error(response: httpx.Response, raw: bytes) -> PortalHTTPError:
    text = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    detail = parsed.get("detail", text) if isinstance(parsed, dict) else text
    code = parsed.get("error") if isinstance(parsed, dict) else None
    try:
        retry_after = float(response.headers.get("Retry-After", 0) or 0)
    except ValueError:
        retry_after = 0.0
    retry_after = min(max(retry_after, 0.0), 3600.0) if retry_after == retry_after else 0.0  # NaN
    return PortalHTTPError(
        response.status_code, str(detail)[:2000], code if isinstance(code, str) else None, retry_after
    )
