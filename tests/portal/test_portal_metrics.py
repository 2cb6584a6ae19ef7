"""The portal's ``/metrics``: only for Prometheus (allowed addresses or its bearer token), counters of the events
the portal cares about, and the Grafana dashboard in ``deploy/`` built on names the scrapes really carry."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from portal import metrics
from portal.processes import create_user_with_node_token, live_portal, manage
from swarmnode.launcher import LocalSwarm
from swarmnode.testing.polling import wait_until

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "layerswarm.json"
OUR_PREFIXES = ("swarmnode_", "layerswarm_", "django_")


def sample_names(text: str) -> set[str]:
    """Every sample name of a scrape (``x_total``, ``x_bucket`` ...) and its family's name."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def dashboard_metric_names() -> set[str]:
    """The metric names the dashboard's panels query."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {name for e in exprs for name in re.findall(r"\b[a-z_]+\b", e) if name.startswith(OUR_PREFIXES)}


def test_a_stranger_gets_404_and_no_metrics(client, settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1/32"]
    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 404
    wrong = client.get("/metrics", REMOTE_ADDR="203.0.113.5", HTTP_AUTHORIZATION="Bearer scrape-secreT")
    assert wrong.status_code == 404
    # Claiming to be loopback in X-Forwarded-For does not help: the stranger is not a trusted proxy.
    settings.TRUSTED_PROXIES = ["10.0.0.1/32"]
    forged = client.get("/metrics", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert forged.status_code == 404


def test_a_visitor_behind_our_proxy_is_judged_by_their_own_address(client, settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1/32"]
    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]  # nginx on this host, which is also an allowed address
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 404


def test_prometheus_reads_them_from_an_allowed_address_or_with_the_token(client, settings, db):
    settings.METRICS_ALLOWED_IPS = ["10.9.0.0/16"]
    settings.METRICS_TOKEN = "scrape-secret"
    from_prometheus = client.get("/metrics", REMOTE_ADDR="10.9.3.4")
    assert from_prometheus.status_code == 200
    assert from_prometheus["Content-Type"].startswith("text/plain; version=")
    with_token = client.get("/metrics", REMOTE_ADDR="198.51.100.7", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert with_token.status_code == 200
    assert "layerswarm_tracker_nodes" in sample_names(with_token.content.decode())


def test_it_counts_generations_by_a_bounded_set_of_outcomes(db):
    before = metrics.GATEWAY_GENERATIONS.labels("other")._value.get()
    metrics.generation_finished("<script>", 0)
    assert metrics.GATEWAY_GENERATIONS.labels("other")._value.get() == before + 1
    assert "<script>" not in metrics.scrape().decode()


def test_the_grafana_dashboard_loads_and_queries_our_metrics():
    names = dashboard_metric_names()
    assert {n.split("_")[0] for n in names} == {"swarmnode", "layerswarm", "django"}


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple], float]]:
    """A scrape's text and ``{(sample name, sorted labels): value}``."""
    with urllib.request.urlopen(url, timeout=15) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def total(samples: dict, name: str, **labels) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


@pytest.mark.slow
@pytest.mark.model
def test_both_endpoints_count_a_real_generation_and_carry_every_dashboard_metric(tmp_path):
    env = {"LEDGER_SETTLE_EVERY": "1"}
    with live_portal(tmp_path, f"layerswarm_metrics_{os.getpid()}", env=env) as portal:
        token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
        key = manage(["create_api_key", "volunteer"], portal.env).stdout.strip().splitlines()[-1]
        manage(
            ["shell", "-c", "from django.contrib.auth.models import User; from portal.ledger.books import deposit; "
             "deposit(User.objects.get(username='volunteer'), 1_000_000, 'metrics-test')"],
            portal.env,
        )  # fmt: skip
        extra = ["--backend", "torch", "--portal", portal.url, "--token", token]
        with LocalSwarm("smollm2", 30, 2, extra_args=extra, log_dir=tmp_path) as swarm:
            wait_until(lambda: _covered(portal.url), 90, "the tracker to see both nodes")
            node_urls = [n.url.replace("ws://", "http://").split("/layerswarm")[0] + "/metrics" for n in swarm.nodes]
            nodes_before = [scrape(u)[1] for u in node_urls]
            _, portal_before = scrape(f"{portal.url}/metrics")

            answer = _chat(portal.url, key)
            completion = answer["usage"]["completion_tokens"]
            assert completion > 0

            with connect(swarm.nodes[0].url, compression=None) as ws:  # and one peer sending garbage
                ws.send(b"\x93 not a frame")
                ws.recv(timeout=30)
            scrapes = [scrape(u) for u in node_urls]
            errors = "swarmnode_errors_total"
            assert (
                total(scrapes[0][1], errors, code="bad_frame") == total(nodes_before[0], errors, code="bad_frame") + 1
            )
            for before, (_, after) in zip(nodes_before, scrapes, strict=True):
                assert total(after, "swarmnode_steps_total") >= total(before, "swarmnode_steps_total") + completion
                assert total(after, "swarmnode_received_bytes_total") > total(before, "swarmnode_received_bytes_total")
                assert total(after, "swarmnode_sent_bytes_total") > total(before, "swarmnode_sent_bytes_total")
                assert total(after, "swarmnode_batch_size_count") > total(before, "swarmnode_batch_size_count")

            def portal_moved():
                text, now = scrape(f"{portal.url}/metrics")
                done = total(now, "layerswarm_gateway_generations_total", outcome="done")
                settled = total(now, "layerswarm_ledger_settlements_total")
                tasks = total(now, "layerswarm_celery_tasks_total", outcome="success")
                ok = done > total(portal_before, "layerswarm_gateway_generations_total", outcome="done")
                return ok and settled > 0 and tasks > 0 and (text, now)

            # Receipts reach the portal when the gateway's sessions close; Celery settles them each second.
            portal_text, portal_after = wait_until(portal_moved, 60, "generation, settlement and task counters")
            tokens = total(portal_after, "layerswarm_gateway_tokens_total")
            assert tokens - total(portal_before, "layerswarm_gateway_tokens_total") == completion
            requests = "django_http_requests_total_by_method_total"
            assert total(portal_after, requests, method="POST") > total(portal_before, requests, method="POST")
            assert total(portal_after, "layerswarm_tracker_nodes", state="online") == 2
            assert key not in portal_text and token not in portal_text

    scraped = set().union(*(sample_names(text) for text, _ in scrapes), sample_names(portal_text))
    missing = dashboard_metric_names() - scraped
    assert not missing, f"the dashboard queries metrics no scrape has: {sorted(missing)}"


def _covered(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/api/v1/swarm/health/?model=smollm2", timeout=10) as r:
        return json.loads(r.read())["models"][0]["covered"]


def _chat(url: str, key: str) -> dict:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 6, "temperature": 0}
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=180) as response:
        return json.loads(response.read())
