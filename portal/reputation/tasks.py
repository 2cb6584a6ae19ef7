"""Periodic reputation work (Celery beat); each task wraps one domain function."""

from celery import shared_task

from portal.reputation import scoring


@shared_task
def decay_reputation() -> int:
    """Decay every node's evidence, credit online time, record a history point."""
    return scoring.decay_all()


@shared_task
def prune_score_history() -> int:
    """Drop old score history."""
    return scoring.prune_history()
