"""Countersigned usage receipts on their way to the portal (spec §8.4).

A node that announces to a portal (``--portal`` and ``--token``) hands every receipt it
countersigns to a :class:`ReceiptOutbox`, a background task that posts them to
``/api/v1/receipts/`` with the node token. Receipts wait in a :class:`~swarmnode.server.receipt_store.ReceiptStore`
(an SQLite file under ``$LAYERSWARM_HOME/receipts/``) until the portal answered for them, so a node
killed with receipts pending sends them after it restarts. The portal being down, resetting
connections or answering garbage never stops the node nor the task: failures are retried with
exponential backoff (``tenacity``). The portal stores each receipt id once, so a receipt posted twice (a reply
lost after the portal stored it) is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, retry_if_result, wait_exponential

from swarmnode.server.announce import PortalRejected, post_json
from swarmnode.server.blocking import run_blocking
from swarmnode.server.receipt_store import ReceiptStore, default_path
from swarmnode.trust.receipts import SignedReceipt

log = logging.getLogger("swarmnode.trust.receipts")

RECEIPTS_PATH = "/api/v1/receipts/"


class ReceiptOutbox:
    """Posts countersigned receipts to the portal in the background, oldest first.

    Args:
        portal: the portal's base URL.
        token: the node token.
        timeout: seconds per HTTP request.
        max_pending: receipts kept while the portal is unreachable (the oldest are dropped beyond).
        max_backoff: the longest wait between retries.
        path: the outbox file; default ``$LAYERSWARM_HOME/receipts/<portal and token digest>.sqlite3``;
            ``None`` with ``persist=False`` keeps receipts in memory only.
        persist: keep receipts in a file (what a crash must not lose).
    """

    def __init__(
        self,
        portal: str,
        token: str,
        timeout: float = 10.0,
        max_pending: int = 10_000,
        max_backoff: float = 60.0,
        path: str | Path | None = None,
        persist: bool = True,
    ) -> None:
        self.url = portal.rstrip("/") + RECEIPTS_PATH
        self.token = token
        self.timeout = timeout
        self.max_backoff = max_backoff
        if persist and path is None:
            path = default_path(portal, token)
        try:
            self.store = ReceiptStore(path if persist else None, max_pending)
        except (sqlite3.Error, OSError) as exc:  # an unusable file must not stop the node: keep them in memory
            log.error("receipt outbox %s unusable (%s): pending receipts will not survive a restart", path, exc)
            self.store = ReceiptStore(None, max_pending)
        self.sent = 0
        self.refused = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        """Receipts not yet answered by the portal."""
        return len(self.store)

    def put(self, signed: SignedReceipt) -> None:
        """Queue a receipt for the portal, on disk before returning (never raises)."""
        try:
            self.store.add(signed)
        except sqlite3.Error as exc:
            log.error("could not store receipt %s (%s): it is lost", signed.receipt.receipt_id, exc)
            return
        self._wake.set()

    def start(self) -> None:
        """Start posting in the background (receipts left by an earlier run go first)."""
        self._task = asyncio.create_task(self._run(), name="receipts")

    async def _run(self) -> None:
        # Not delivered, or a bug or a surprise (nothing may end the task that carries the node's earnings):
        # wait, doubling up to max_backoff; a delivery starts the next receipt from the shortest wait.
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda delivered: not delivered) | retry_if_exception_type(Exception),
            wait=wait_exponential(max=self.max_backoff),
            sleep=lambda seconds: self._sleep(seconds),
            before_sleep=_log_surprise,
        )
        while True:
            await retrying(self._send_oldest)

    async def _send_oldest(self) -> bool:
        """Send the oldest receipt (waiting for one); True once the portal answered for it, False to back off."""
        signed = self.store.oldest()
        while signed is None:
            self._wake.clear()
            await self._wake.wait()
            signed = self.store.oldest()
        rid = signed.receipt.receipt_id
        try:
            await run_blocking(post_json, self.url, self.token, signed.to_json(), self.timeout)
            self.sent += 1
        except PortalRejected as exc:
            if exc.status >= 500 or exc.status in (401, 408, 429):  # the portal's trouble, or a token to fix
                log.warning("portal could not take receipt %s (%s); retrying", rid, exc)
                if exc.retry_after:
                    await self._sleep(exc.retry_after)
                return False
            log.error("portal refused receipt %s: %s", rid, exc)  # refused for good: do not retry
            self.refused += 1
        except (OSError, ValueError) as exc:
            log.warning("portal unreachable for receipts (%s); retrying", exc)
            return False
        self.store.remove(rid)
        return True

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def close(self, flush_timeout: float = 3.0) -> None:
        """Try to send what is left for up to ``flush_timeout`` seconds, then stop (the rest stays in the file)."""
        if self._task is None:
            self.store.close()
            return
        deadline = asyncio.get_running_loop().time() + flush_timeout
        while self.pending and asyncio.get_running_loop().time() < deadline and not self._task.done():
            await asyncio.sleep(0.05)
        if self.pending:
            log.warning("%d receipt(s) not delivered to the portal yet: sent when the node starts again", self.pending)
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        self.store.close()


def _log_surprise(state: RetryCallState) -> None:
    if state.outcome is not None and state.outcome.failed:
        exc = state.outcome.exception()
        log.error("receipt outbox failed unexpectedly (%r); retrying in %.0fs", exc, state.upcoming_sleep, exc_info=exc)


def start_outbox(node) -> ReceiptOutbox | None:
    """An outbox for ``node`` if it announces to a portal; otherwise ``None``."""
    portal = getattr(node.config, "portal", None)
    token = getattr(node.config, "token", None)
    if not portal or not token:
        return None
    outbox = ReceiptOutbox(portal, token)
    outbox.start()
    return outbox
