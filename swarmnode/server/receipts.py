"""Countersigned usage receipts on their way to the portal (spec §8.4).

A node that announces to a portal (``--portal`` and ``--token``) hands every receipt it
countersigns to a :class:`ReceiptOutbox`, a background task that posts them to
``/api/v1/receipts/`` with the node token. The portal being down never stops the node: receipts
wait in memory (at most ``max_pending``; the oldest are dropped beyond that, with a warning) and
are retried with exponential backoff. The portal settles each receipt id once, so a receipt
posted twice (a reply lost after the portal stored it) is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from swarmnode.server.announce import PortalRejected, post_json
from swarmnode.server.blocking import run_blocking
from swarmnode.trust.receipts import SignedReceipt

log = logging.getLogger("swarmnode.trust.receipts")

RECEIPTS_PATH = "/api/v1/receipts/"


class ReceiptOutbox:
    """Posts countersigned receipts to the portal in the background.

    Args:
        portal: the portal's base URL.
        token: the node token.
        timeout: seconds per HTTP request.
        max_pending: receipts kept while the portal is unreachable.
        max_backoff: the longest wait between retries.
    """

    def __init__(
        self, portal: str, token: str, timeout: float = 10.0, max_pending: int = 10_000, max_backoff: float = 60.0
    ) -> None:
        self.url = portal.rstrip("/") + RECEIPTS_PATH
        self.token = token
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.pending: deque[SignedReceipt] = deque(maxlen=max_pending)
        self.sent = 0
        self.refused = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def put(self, signed: SignedReceipt) -> None:
        """Queue a receipt for the portal (never blocks, never raises)."""
        if len(self.pending) == self.pending.maxlen:
            log.warning("receipt outbox full: dropping the oldest receipt")
        self.pending.append(signed)
        self._wake.set()

    def start(self) -> None:
        """Start posting in the background."""
        self._task = asyncio.create_task(self._run(), name="receipts")

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            signed = self.pending[0]
            try:
                await run_blocking(post_json, self.url, self.token, signed.to_json(), self.timeout)
                self.sent += 1
            except PortalRejected as exc:
                if exc.status < 500 and exc.status not in (408, 429):  # refused for good: do not retry
                    log.error("portal refused receipt %s: %s", signed.receipt.receipt_id, exc)
                    self.refused += 1
                else:
                    await self._sleep(max(backoff, exc.retry_after))
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
            except (OSError, ValueError) as exc:
                log.warning("portal unreachable for receipts (%s); retrying in %.0fs", exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 1.0
            if self.pending and self.pending[0] is signed:
                self.pending.popleft()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def close(self, flush_timeout: float = 3.0) -> None:
        """Try to send what is left for up to ``flush_timeout`` seconds, then stop."""
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + flush_timeout
        while self.pending and asyncio.get_running_loop().time() < deadline and not self._task.done():
            await asyncio.sleep(0.05)
        if self.pending:
            log.warning("%d receipt(s) not delivered to the portal", len(self.pending))
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass


def start_outbox(node) -> ReceiptOutbox | None:
    """An outbox for ``node`` if it announces to a portal; otherwise ``None``."""
    portal = getattr(node.config, "portal", None)
    token = getattr(node.config, "token", None)
    if not portal or not token:
        return None
    outbox = ReceiptOutbox(portal, token)
    outbox.start()
    return outbox
