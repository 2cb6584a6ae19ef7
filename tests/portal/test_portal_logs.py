"""``LOG_FORMAT=json``: the portal logs one JSON object per line, each HTTP request's events carrying its id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUEST = """
import django, sys
django.setup()
from django.test import Client
response = Client(HTTP_HOST="localhost").get("/no-such-page/")
print(response.status_code, response["X-Request-ID"], file=sys.stdout)
"""


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LOG_"))}
    env = {**clean, "DJANGO_SETTINGS_MODULE": "portal.settings", "DJANGO_DEBUG": "1", **env}
    return subprocess.run([sys.executable, "-c", REQUEST], cwd=ROOT, env=env, capture_output=True, text=True)


def test_it_logs_one_json_event_per_line_with_the_request_id():
    result = _run({"LOG_FORMAT": "json", "DJANGO_LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.stderr
    status, request_id = result.stdout.split()
    assert status == "404" and len(request_id) == 32
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]  # every line is JSON
    [not_found] = [e for e in events if e["logger"] == "django.request"]
    assert not_found["level"] == "WARNING" and "/no-such-page/" in not_found["message"]
    assert not_found["request_id"] == request_id and "time" in not_found


def test_it_refuses_an_unknown_log_format():
    result = _run({"LOG_FORMAT": "xml"})
    assert result.returncode != 0 and "LOG_FORMAT='xml' is not text or json" in result.stderr
