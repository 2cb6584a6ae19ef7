"""Discovery through the tracker fails with a clear error when the portal cannot help."""

import socket

import pytest

from swarmnode.discovery.tracker import TrackerError, fetch_spans, spans_url


def test_it_builds_the_spans_url():
    assert spans_url("http://127.0.0.1:8000/", "smollm2") == "http://127.0.0.1:8000/api/v1/models/smollm2/spans/"


def test_it_explains_an_unreachable_tracker():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackerError, match="cannot ask the tracker"):
        fetch_spans(f"http://127.0.0.1:{port}", "smollm2", timeout=2)
