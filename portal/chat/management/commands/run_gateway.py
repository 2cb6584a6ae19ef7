"""``manage.py run_gateway``: a gateway worker serving chat and API generations from the channel layer.

Run as many as you like (on as many machines) against the same Redis: each takes requests while it
has free slots. Ctrl-C or SIGTERM stops it; running generations are cancelled and their swarm
sessions closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from portal.generation import Gateway, shared_pool


class Command(BaseCommand):
    help = "Run a chat/API gateway worker: swarm client sessions for the portal, over the channel layer."

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=settings.CHAT_GATEWAY_CONCURRENCY)
        parser.add_argument("--preload", action="append", default=[], help="load this model's client parts now")

    def handle(self, *args, concurrency: int, preload: list[str], **options):
        logging.getLogger("portal.generation").setLevel(logging.INFO)
        if settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("InMemoryChannelLayer"):
            self.stderr.write(
                "warning: the channel layer is in memory, so only this process can reach this gateway; "
                "set REDIS_URL (daphne then needs CHAT_GATEWAY_EMBEDDED=0)"
            )
        pool = shared_pool()
        for name in preload:
            self.stdout.write(f"loading {name}...")
            try:
                pool.get(name)
            except Exception as exc:
                self.stderr.write(f"{name}: {exc} (will retry on the first request)")
        self.stdout.write(f"gateway ready: {concurrency} generations at once on {settings.CHAT_GATEWAY_CHANNEL}")
        asyncio.run(self._serve(Gateway(pool, concurrency=concurrency)))

    async def _serve(self, gateway: Gateway) -> None:
        task = asyncio.create_task(gateway.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            self.stdout.write(f"gateway stopped after {gateway.served} requests")
