"""The node's routing table (spec §4, §4.6): every request type has one handler, no reply type has one."""

from swarmnode.protocol import MESSAGE_TYPES, CloseSession, Forward, Info, OpenSession, Step
from swarmnode.server.handlers import HANDLERS


def test_it_has_one_handler_per_request_type_and_none_for_replies():
    requests = {Info, OpenSession, Step, Forward, CloseSession}
    assert set(HANDLERS) == requests
    replies = set(MESSAGE_TYPES.values()) - requests
    assert replies and not replies & set(HANDLERS)  # a reply sent to a node gets unexpected_message
