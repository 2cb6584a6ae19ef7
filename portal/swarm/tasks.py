"""Periodic tracker work (Celery beat); each task wraps one domain function."""

from celery import shared_task

from portal.swarm import tracker


@shared_task
def expire_stale_nodes() -> int:
    """Mark nodes that missed their heartbeats offline."""
    return tracker.expire_stale_nodes()


@shared_task
def flush_heartbeats() -> int:
    """Write the heartbeats buffered in Redis to the database (write-behind, ``portal.swarm.beats``)."""
    return tracker.flush_heartbeats()


@shared_task
def prune_heartbeats() -> int:
    """Drop old heartbeat history."""
    return tracker.prune_heartbeats()
