"""System checks for the settings: a bad combination fails ``manage.py check`` with a clear message."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register()
def check_swarm_settings(app_configs, **kwargs):
    """Heartbeat timing must let a node miss at least one heartbeat before it goes offline."""
    errors = []
    interval, timeout = settings.SWARM_HEARTBEAT_INTERVAL, settings.SWARM_HEARTBEAT_TIMEOUT
    if interval <= 0:
        errors.append(Error("SWARM_HEARTBEAT_INTERVAL must be positive", id="portal.E001"))
    elif timeout < 2 * interval:
        errors.append(
            Error(
                f"SWARM_HEARTBEAT_TIMEOUT ({timeout}s) must be at least twice SWARM_HEARTBEAT_INTERVAL ({interval}s)",
                hint="otherwise one late heartbeat marks a healthy node offline",
                id="portal.E002",
            )
        )
    for cidr in settings.TRUSTED_PROXIES:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            errors.append(Error(f"TRUSTED_PROXIES: {cidr!r} is not an IP network (e.g. 10.0.0.0/8)", id="portal.E004"))
    if settings.API_MAX_JSON_BYTES < 1024:
        errors.append(Error("API_MAX_JSON_BYTES must be at least 1024", id="portal.E003"))
    return errors


@register(Tags.security, deploy=True)
def check_production_services(app_configs, **kwargs):
    """Production runs on PostgreSQL and Redis with a real secret key."""
    problems = []
    if not settings.SECRET_KEY or settings.SECRET_KEY.startswith("dev-insecure"):
        problems.append(Error("set DJANGO_SECRET_KEY to a long random value", id="portal.E010"))
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        problems.append(
            Warning("production should use PostgreSQL", hint="set DATABASE_URL=postgres://...", id="portal.W011")
        )
    if not settings.REDIS_URL:
        problems.append(
            Warning(
                "no REDIS_URL: the channel layer is in-memory and Celery uses a local folder broker",
                hint="set REDIS_URL=redis://... so several daphne workers and Celery share state",
                id="portal.W012",
            )
        )
    return problems
