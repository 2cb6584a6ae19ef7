"""``swarmnode bench-audit``: the seeded simulation over recorded outcomes (the real-node parts run in
the benchmark itself and in tests/swarmnode/client/test_audit_nodes.py)."""

from swarmnode.bench.audit import _simulate
from swarmnode.cli import build_parser


def test_it_detects_a_node_that_lies_on_every_step_in_every_seeded_run():
    rate, median = _simulate([True] * 200, runs=1000, rate=0.05, within=100)
    assert rate == 1.0 and 10 <= median <= 30  # the first audit, ~1/rate steps in


def test_it_catches_a_rare_lie_at_the_next_audit_since_audits_cover_every_step_since_the_last():
    flagged = [False] * 200
    flagged[50] = True  # one perturbed step (step 51)
    rate, median = _simulate(flagged, runs=500, rate=0.05, within=100)
    assert rate == 1.0 and 51 <= median <= 51 + 39


def test_it_never_detects_an_honest_node():
    assert _simulate([False] * 200, runs=100, rate=0.05, within=100)[0] == 0.0


def test_it_is_a_cli_command_with_json_output():
    args = build_parser().parse_args(["bench-audit", "--json", "--honest-steps", "100"])
    assert args.json and args.honest_steps == 100 and args.func.__name__ == "_bench_audit"
