"""Countersigned receipts the portal has not acknowledged yet, kept in an SQLite file (spec §8.4).

A receipt is a node's unpaid earnings: it must survive a crash, a SIGKILL or a reboot between the
moment the node countersigns it and the moment the portal stores it. Each receipt is one row, written
in its own transaction before :meth:`ReceiptStore.add` returns and deleted only once the portal
answered for it, so a restarted node finds every receipt still owed and sends it again (the portal
stores each receipt id once, so a resend after a lost acknowledgement is harmless).

Only the standard library (``sqlite3``) is used; the file lives under ``$LAYERSWARM_HOME/receipts/``,
one per portal and token, so nodes of different swarms on one machine never send each other's receipts
(nodes sharing a token share the file: either may deliver a receipt, and the portal stores each id once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path

from swarmnode.models.registry import layerswarm_home
from swarmnode.trust.receipts import ReceiptError, SignedReceipt

log = logging.getLogger("swarmnode.trust.receipts")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: the oldest is sent first
    receipt_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,                     -- SignedReceipt.to_json() as JSON
    added_at REAL NOT NULL
)
"""


def default_path(portal: str, token: str) -> Path:
    """``$LAYERSWARM_HOME/receipts/<digest of portal and token>.sqlite3``."""
    digest = hashlib.sha256(f"{portal.rstrip('/')}\0{token}".encode()).hexdigest()[:24]
    return layerswarm_home() / "receipts" / f"{digest}.sqlite3"


class ReceiptStore:
    """Receipts waiting for the portal, oldest first, one row each.

    Args:
        path: the SQLite file (created with its folder, mode 0600); ``None`` keeps them in memory only.
        max_pending: rows kept at most; beyond that the oldest are dropped, with a warning.

    Raises:
        sqlite3.Error: the file cannot be opened or is not an SQLite database.
    """

    def __init__(self, path: str | Path | None, max_pending: int = 10_000) -> None:
        self.path = Path(path) if path is not None else None
        self.max_pending = max_pending
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(mode=0o600, exist_ok=True)  # receipts name the node's clients: not for other users
        # Autocommit: every statement is its own transaction, on disk (WAL) when it returns.
        self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; a power cut may lose the last few
        self._db.execute(_SCHEMA)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]

    def add(self, signed: SignedReceipt) -> None:
        """Keep ``signed`` until :meth:`remove`; a receipt id already kept is not added twice."""
        body = json.dumps(signed.to_json(), separators=(",", ":"))
        self._db.execute(
            "INSERT OR IGNORE INTO receipts (receipt_id, body, added_at) VALUES (?, ?, ?)",
            (signed.receipt.receipt_id, body, time.time()),
        )
        excess = len(self) - self.max_pending
        if excess > 0:
            log.warning("receipt outbox full: dropping the %d oldest receipt(s)", excess)
            self._db.execute(
                "DELETE FROM receipts WHERE seq IN (SELECT seq FROM receipts ORDER BY seq LIMIT ?)", (excess,)
            )

    def oldest(self) -> SignedReceipt | None:
        """The receipt waiting longest, or None. A row that no longer parses is dropped (and logged)."""
        while True:
            row = self._db.execute("SELECT receipt_id, body FROM receipts ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            try:
                return SignedReceipt.from_json(json.loads(row[1]))
            except (ReceiptError, ValueError, TypeError, KeyError) as exc:
                log.error("dropping unreadable stored receipt %s: %s", row[0], exc)
                self.remove(row[0])

    def remove(self, receipt_id: str) -> None:
        """Forget a receipt the portal answered for."""
        self._db.execute("DELETE FROM receipts WHERE receipt_id = ?", (receipt_id,))

    def close(self) -> None:
        """Close the file (what is in it stays for the next start).

        The file is kept even when empty: co-located nodes announcing with the same token share it (SQLite
        locks it for each statement), and removing it under another node would lose what that node writes.
        """
        self._db.close()
