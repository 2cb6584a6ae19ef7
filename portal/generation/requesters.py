"""Who asks for a generation: a signed-in user or an anonymous browser session."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Self

from django.conf import settings


@dataclass(frozen=True)
class Requester:
    """Whoever asks for an answer: a user, or an anonymous browser session (what it pays and salts with)."""

    user_id: int | None
    session_key: str = ""

    @classmethod
    def of(cls, user, session_key: str | None) -> Self:
        """The requester for a request's or a websocket scope's user and session."""
        if user is not None and user.is_authenticated:
            return cls(user.pk)
        return cls(None, session_key or "")

    @property
    def prefix_salt(self) -> str:
        """This requester's salt for the nodes' prompt-prefix reuse (spec §4.9): a requester's prompts reuse
        each other's beginnings on a node; different requesters never share (no timing hints across users)."""
        if not self.known:
            return ""
        key = f"user:{self.user_id}" if self.user_id is not None else f"session:{self.session_key}"
        return hmac.new(settings.SECRET_KEY.encode(), f"prefix-salt:{key}".encode(), hashlib.sha256).hexdigest()[:32]

    @property
    def known(self) -> bool:
        """A user or a session we can keep conversations and quotas for."""
        return self.user_id is not None or bool(self.session_key)
