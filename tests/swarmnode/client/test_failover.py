"""Ban list (exponential backoff, circuit breaker) and adaptive step timeouts, on a fake clock."""

from swarmnode.client.failover import BanList, FailoverPolicy, StepTimer


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_it_bans_with_exponential_backoff_and_forgives_on_success():
    clock = Clock()
    bans = BanList(FailoverPolicy(ban_base_s=1.0, ban_max_s=8.0, breaker_failures=99), clock)
    assert [bans.failed("n") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert bans.is_banned("n") and bans.banned() == {"n"}
    clock.now += 8.1
    assert not bans.is_banned("n")
    bans.succeeded("n")
    assert bans.failed("n") == 1.0  # the backoff starts over after a success


def test_it_opens_the_circuit_breaker_for_a_flapping_node():
    clock = Clock()
    policy = FailoverPolicy(ban_base_s=1.0, breaker_failures=3, breaker_window_s=60.0, breaker_open_s=600.0)
    bans = BanList(policy, clock)
    for _ in range(3):
        bans.failed("flappy")
        clock.now += 5.0
        bans.succeeded("flappy")  # answers in between
    assert bans.is_banned("flappy")
    clock.now += 500.0
    assert bans.is_banned("flappy")
    clock.now += 200.0
    assert not bans.is_banned("flappy")


def test_it_counts_recent_failures_for_routing_penalties():
    clock = Clock()
    bans = BanList(FailoverPolicy(breaker_window_s=60.0, breaker_failures=99), clock)
    bans.failed("a")
    bans.failed("a")
    bans.failed("b")
    assert bans.recent_failures() == {"a": 2, "b": 1}
    clock.now += 61.0
    assert bans.recent_failures() == {}


def test_it_times_steps_from_what_it_measured():
    timer = StepTimer(FailoverPolicy(first_step_timeout_s=60.0, min_step_timeout_s=0.5, step_timeout_factor=10.0))
    assert timer.timeout("n", 1) == 60.0  # nothing known yet
    timer.record("n", 1, 0.02)
    assert timer.timeout("n", 1) == 0.5  # 10 x 20 ms, floored
    timer.record("n", 1, 0.2)
    assert 0.5 < timer.timeout("n", 1) < 60.0
    assert timer.timeout("n", 300) == 60.0  # a prefill is another class: not known yet
    assert timer.timeout("other", 1) == 60.0
