"""The audit schedule, cheap checks and policies (``swarmnode/client/audit.py``)."""

import random

import numpy as np
import pytest

from swarmnode.client.audit import AuditPolicy, AuditSchedule, cheap_check
from swarmnode.protocol import tensor_from_numpy


def _gaps(policy: AuditPolicy, steps: int) -> list[int]:
    schedule, last, gaps = AuditSchedule(policy), 0, []
    for step in range(1, steps + 1):
        if schedule.due():
            gaps.append(step - last)
            last = step
    return gaps


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_it_audits_at_the_asked_rate_and_never_waits_longer_than_the_guarantee(rate):
    policy = AuditPolicy(rate=rate, seed=7)
    gaps = _gaps(policy, 200_000)
    assert max(gaps) <= policy.max_gap == round(2 / rate) - 1
    assert len(gaps) / 200_000 == pytest.approx(rate, rel=0.05)


def test_it_guarantees_an_audit_within_100_steps_at_5_percent_for_every_seed():
    for seed in range(1000):
        schedule = AuditSchedule(AuditPolicy(rate=0.05), rng=random.Random(seed))
        assert any(schedule.due() for _ in range(100)), seed


def test_it_audits_every_step_at_rate_1_and_never_at_rate_0():
    assert _gaps(AuditPolicy(rate=1.0), 50) == [1] * 50
    assert _gaps(AuditPolicy(rate=0.0), 50) == []


def test_it_refuses_nonsense_policies():
    for bad in [dict(rate=1.5), dict(rate=-0.1), dict(mode="paranoid", rate=0.1), dict(mode="verified", rate=0.0)]:
        with pytest.raises(ValueError):
            AuditPolicy(**bad)


def test_it_flags_implausible_outputs_cheaply():
    policy = AuditPolicy(rate=0.1)
    x = tensor_from_numpy(np.ones((1, 2, 4), np.float32))
    assert cheap_check(x, tensor_from_numpy(np.full((1, 2, 4), 3.0, np.float32)), policy) is None
    assert "shape" in cheap_check(x, tensor_from_numpy(np.ones((1, 1, 4), np.float32)), policy)
    assert "NaN" in cheap_check(x, tensor_from_numpy(np.full((1, 2, 4), np.nan, np.float32)), policy)
    assert "RMS" in cheap_check(x, tensor_from_numpy(np.full((1, 2, 4), 1e6, np.float32)), policy)
    assert "RMS" in cheap_check(x, tensor_from_numpy(np.zeros((1, 2, 4), np.float32)), policy)
