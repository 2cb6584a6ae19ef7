"""Token buckets behind the relay's rate limits (spec §9.6), on a fake clock."""

from swarmnode.relaying.throttle import TokenBucket


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_it_lets_a_burst_through_then_asks_to_wait():
    clock = Clock()
    bucket = TokenBucket(100.0, burst=100.0, clock=clock)
    assert bucket.delay(100) == 0.0
    assert bucket.delay(50) == 0.5  # 50 units at 100/s
    clock.now = 1.5  # refilled to the burst after the debt is paid
    assert bucket.delay(100) == 0.0


def test_it_slows_a_frame_bigger_than_the_burst_instead_of_refusing_it():
    bucket = TokenBucket(10.0, burst=10.0, clock=Clock())
    assert bucket.delay(40) == 3.0


def test_it_never_waits_when_unlimited():
    bucket = TokenBucket(0)
    assert bucket.unlimited and bucket.delay(10**12) == 0.0
