"""API fuzzing: schemathesis generates requests from ``/api/schema/`` (the DRF API and the OpenAI-compatible ``/v1``
endpoints) against a real daphne, authenticated as an ordinary account; no answer may be a server error or break
the schema it documents.

``API_FUZZ_EXAMPLES`` sets the examples per operation (the suite's default is small; a long run sets thousands).
No nodes serve a model here, so generation requests end in the documented 503 'the swarm does not cover the model'
(or 404 for an unknown model): that refusal is the correct answer, so it alone is not counted as a server error.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
)

from portal.processes import create_user_with_node_token, live_portal, manage

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, response_headers_conformance]
# The swarm has no nodes here: 'not covered' / 'no gateway' are documented 503s of the generation endpoints.
NO_SWARM_CODES = {"not_covered", "model_not_covered", "gateway_unavailable", "no_route", "swarm_unavailable"}


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-fuzz")
    # Generous limits: this test looks for crashes, not for the throttles (their own tests cover them).
    env = {"API_THROTTLE_USER": "100000/min", "API_THROTTLE_REPORTS": "100000/min", "RATE_LIMIT_OPENAI": "100000/m"}
    with live_portal(folder, f"layerswarm_api_fuzz_{os.getpid()}", celery=False, env=env) as portal:
        portal.node_token = create_user_with_node_token(portal.env, "fuzzer", "fuzzer-password-1")
        portal.api_key = manage(["create_api_key", "fuzzer"], portal.env).stdout.strip().splitlines()[-1]
        yield portal


def _headers(operation, portal) -> dict[str, str]:
    """The operation's own credential: a node token for the tracker endpoints, else the account's API key."""
    security = operation.definition.raw.get("security") or []
    schemes = {name for requirement in security for name in requirement}
    if "nodeToken" in schemes and "apiKey" not in schemes and "cookieAuth" not in schemes:
        return {"Authorization": f"Bearer {portal.node_token}"}
    return {"Authorization": f"Bearer {portal.api_key}"}


def _fuzz(operation, mode: GenerationMode, portal, calls: list[int]) -> None:
    headers = _headers(operation, portal)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None, phases=[Phase.explicit, Phase.generate])  # fmt: skip
    def run(case):
        response = case.call(base_url=portal.url, headers=headers, timeout=60)
        calls.append(response.status_code)
        checks = CHECKS
        if response.status_code == 503 and case.path.startswith("/v1/"):
            code = (response.json().get("error") or {}).get("code")
            assert code in NO_SWARM_CODES, f"unexpected 503 from {case.path}: {response.text[:300]}"
            checks = [c for c in CHECKS if c is not not_a_server_error]
        case.validate_response(response, checks=checks)

    run()


def test_it_never_answers_a_generated_request_with_a_server_error(portal):
    schema = schemathesis.openapi.from_url(f"{portal.url}/api/schema/")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"} <= labels
    failures, counts = [], {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls: list[int] = []
            try:
                _fuzz(operation, mode, portal, calls)
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # report every operation's failure together
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
            counts[(operation.label, mode.value)] = len(calls)
    total = sum(counts.values())
    print(f"\nschemathesis: {total} generated requests over {len(labels)} operations (positive and negative)")
    assert not failures, "\n\n".join(failures)
    assert total >= len(operations) * 2
