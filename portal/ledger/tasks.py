"""Celery tasks of the ledger: thin wrappers around ``portal.ledger.settlement``."""

from celery import shared_task

from portal.ledger import settlement


@shared_task(ignore_result=True)
def settle_receipts(limit: int = 500) -> int:
    """Settle pending receipts (beat: every ``LEDGER_SETTLE_EVERY`` s); safe to run concurrently and to retry."""
    return settlement.settle_pending(limit)


@shared_task(ignore_result=True)
def release_escrow() -> int:
    """Release escrowed earnings of nodes that built their reputation (beat: every ``LEDGER_ESCROW_EVERY`` s)."""
    return settlement.release_escrow()
