"""Bearer secrets (API keys and node tokens): generated once, stored only as a SHA-256 digest.

A secret looks like ``<kind>_<prefix>_<random>``. The prefix is stored in clear so people can tell
their keys apart; the random part is 32 bytes, so a plain SHA-256 digest (not a slow password
hash) is enough to make a leaked database useless for authentication.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

PREFIX_LEN = 8


@dataclass(frozen=True)
class NewSecret:
    """A freshly generated secret: ``plain`` is shown to the user once and never stored."""

    plain: str
    prefix: str
    digest: str


def digest(plain: str) -> str:
    """SHA-256 hex digest of a presented secret."""
    return hashlib.sha256(plain.encode("utf-8", "surrogatepass")).hexdigest()


def generate(kind: str) -> NewSecret:
    """A new random secret of ``kind`` (``lsk`` for API keys, ``lsn`` for node tokens)."""
    prefix = secrets.token_hex(PREFIX_LEN // 2)
    plain = f"{kind}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewSecret(plain=plain, prefix=prefix, digest=digest(plain))
