"""How long the announcer waits after a failure (tenacity drives the retries; the waits are ours)."""

from tenacity import AsyncRetrying, RetryCallState

from swarmnode.server.announce import Announcer, PortalRejected


def waited(announcer: Announcer, attempt: int, exc: BaseException) -> float:
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return announcer._backoff(state)


def test_waits_double_up_to_the_cap_and_honour_retry_after():
    announcer = Announcer(node=None, portal="http://p", token="t", max_backoff=8.0)
    down = ConnectionError("refused")
    assert [waited(announcer, n, down) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    busy = PortalRejected(503, "busy", retry_after=5.0)
    assert waited(announcer, 1, busy) == 5.0  # at least what the portal asked
    assert waited(announcer, 1, PortalRejected(503, "busy", retry_after=3600.0)) == 8.0  # never past the cap


def test_a_forgotten_node_registers_again_at_once_but_only_once_per_outage():
    announcer = Announcer(node=None, portal="http://p", token="t", max_backoff=60.0)
    gone = PortalRejected(410, "offline")
    assert waited(announcer, 1, gone) == 0.0
    assert waited(announcer, 2, gone) == 2.0
