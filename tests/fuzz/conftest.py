"""Shared setup of the protocol fuzz tests (issue #17, "Security testing that stays").

``FUZZ_EXAMPLES`` is the total number of generated inputs for one run of ``tests/fuzz``, shared
evenly by its tests (``make fuzz`` sets 100,000); without it each test runs a short version. Runs
are derandomized and keep no example database, so CI sees the same inputs every time and no
``.hypothesis`` directory appears. The number of inputs actually run is printed at the end.
"""

from __future__ import annotations

import math
import os
import tracemalloc
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings

#: The fuzz tests in this folder; FUZZ_EXAMPLES is split between them.
FUZZ_TESTS = 16
#: Examples per test without FUZZ_EXAMPLES: the few-second version that ``make test`` runs.
SHORT_EXAMPLES = 200
#: What decoding one generated input may allocate at its peak, whatever it declares: generated
#: inputs are at most ~70 KiB, so a decoder that sizes anything by a declared length goes far over.
MAX_PEAK_BYTES = 1 << 20

_total = int(os.environ.get("FUZZ_EXAMPLES") or 0)
settings.register_profile(
    "protocol-fuzz",
    max_examples=math.ceil(_total / FUZZ_TESTS) if _total else SHORT_EXAMPLES,
    derandomize=True,  # the same inputs on every run and every machine
    database=None,  # nothing written under .hypothesis
    deadline=None,  # tracemalloc and a shared CI machine make timings noisy; size is what we bound
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

_ran: Counter[str] = Counter()


@pytest.fixture(scope="module")
def bounded() -> Callable:
    """``bounded(fn, *args)``: call ``fn``, count the input, and fail if its peak allocation exceeds
    :data:`MAX_PEAK_BYTES`; returns what ``fn`` returned."""

    def run(fn, *args, **kwargs):
        _ran[os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]] += 1
        # Traced only around the call: tracing Hypothesis' own generation would cost ten times more.
        tracemalloc.start()
        try:
            return fn(*args, **kwargs)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak <= MAX_PEAK_BYTES, f"{getattr(fn, '__name__', fn)} allocated {peak} bytes at its peak"

    return run


def pytest_terminal_summary(terminalreporter):
    if _ran:
        terminalreporter.write_line(
            f"protocol fuzz: {sum(_ran.values())} generated inputs in {len(_ran)} tests"
            f" (FUZZ_EXAMPLES={_total or 'unset'})"
        )
