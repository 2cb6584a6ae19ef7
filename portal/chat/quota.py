"""The anonymous visitors' quota: a few answers per browser session and per IP address per day."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.cache import cache


class QuotaExhausted(Exception):
    """An anonymous visitor used today's free answers."""


def take_anonymous_answer(session_key: str, ip: str) -> int:
    """Count one answer for an anonymous visitor; return how many are left today.

    Both the session and the IP address are counted, so clearing cookies does not reset the quota.

    Raises:
        QuotaExhausted: either count already reached ``CHAT_ANON_DAILY_ANSWERS``.
    """
    limit = settings.CHAT_ANON_DAILY_ANSWERS
    day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    keys = [f"chat-anon:{day}:session:{session_key}", f"chat-anon:{day}:ip:{ip}"]
    used = [cache.get(k, 0) for k in keys]
    if max(used) >= limit:
        raise QuotaExhausted(
            f"anonymous visitors get {limit} answers a day and you have used them: log in or sign up to keep chatting"
        )
    for key in keys:
        if cache.add(key, 1, timeout=2 * 24 * 3600) is False:
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, timeout=2 * 24 * 3600)
    return limit - max(used) - 1
