"""Protocol errors: every bad input maps to one code a peer can act on (spec §5)."""

from __future__ import annotations


class ProtocolError(Exception):
    """A peer sent something the protocol forbids.

    Attributes:
        code: short machine-readable code (spec §5), e.g. ``bad_frame`` or ``unknown_session``.
        message: a sentence for humans.
        fatal: when true the connection should be closed after the error reply.
    """

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
