"""Settings for two worlds: production passes ``check --deploy``; bad values fail with a clear message."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "swarm.example.org",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/layerswarm",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def _check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # PYTEST_VERSION too: the settings treat a pytest run (and its children) as a local one.
    drop = ("DJANGO_", "DATABASE_", "REDIS_", "SWARM_", "PYTEST_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True
    )


def test_it_passes_the_deploy_check_with_production_settings():
    result = _check(PRODUCTION, "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_it_warns_when_production_runs_on_embedded_services():
    env = {k: v for k, v in PRODUCTION.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = _check(env, "--deploy")
    assert "portal.W011" in result.stderr and "portal.W012" in result.stderr


def test_it_refuses_a_production_start_without_a_secret_key():
    env = {**PRODUCTION, "DJANGO_SECRET_KEY": ""}
    result = _check(env, "--deploy")
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr


def test_it_defaults_to_production_and_refuses_to_start_with_no_settings():
    # An operator who forgets every variable must not get DEBUG pages signed with a public dev key.
    result = _check({})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr and "DJANGO_DEBUG=1" in result.stderr
    shell = "from django.conf import settings; print(settings.DEBUG)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    run = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", shell],
        cwd=ROOT,
        env={**clean, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)},
        capture_output=True,
        text=True,
    )
    assert run.stdout.strip().splitlines()[-1] == "False", run.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG='maybe' is not a boolean"),
        ({"DJANGO_DEBUG": "1", "SWARM_HEARTBEAT_INTERVAL": "ten"}, "SWARM_HEARTBEAT_INTERVAL='ten' is not a number"),
        ({"DJANGO_DEBUG": "1", "SWARM_HEARTBEAT_INTERVAL": "10", "SWARM_HEARTBEAT_TIMEOUT": "15"}, "portal.E002"),
        ({"DJANGO_DEBUG": "1", "TRUSTED_PROXIES": "nginx"}, "portal.E004"),
    ],
)
def test_it_explains_bad_settings(env, message):
    result = _check(env)
    assert result.returncode != 0
    assert message in result.stderr


def test_it_uses_the_configured_database_and_channel_layer(settings):
    # The suite runs twice (see the Makefile): once embedded, once on PostgreSQL + Redis.
    engine = settings.DATABASES["default"]["ENGINE"]
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        assert engine == "django.db.backends.postgresql"
    else:
        assert engine == "django.db.backends.sqlite3"
    assert layer.endswith("RedisChannelLayer" if os.environ.get("REDIS_URL") else "InMemoryChannelLayer")
