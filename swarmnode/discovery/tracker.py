"""Discovery through a portal's tracker: which nodes serve which blocks of a model."""

from __future__ import annotations

import urllib.parse

from swarmnode.discovery.peers import PeerInfo
from swarmnode.discovery.portal_http import PortalHTTPError, call_json


class TrackerError(ValueError):
    """The tracker could not be reached, does not know the model, or sent something unusable."""


def spans_url(portal: str, model: str) -> str:
    """``{portal}/api/v1/models/{model}/spans/``."""
    return f"{portal.rstrip('/')}/api/v1/models/{urllib.parse.quote(model, safe='')}/spans/"


def fetch_spans(portal: str, model: str, timeout: float = 10.0) -> list[PeerInfo]:
    """The online nodes the tracker knows for ``model`` that clients can dial directly.

    Args:
        portal: the portal's base URL, e.g. ``http://127.0.0.1:8000``.
        model: the model's registry name (``smollm2``).
        timeout: seconds to wait for the tracker.

    Returns:
        One :class:`PeerInfo` per node; relayed nodes (spec §9) come with their relay address and ``relay=True``.

    Raises:
        TrackerError: unreachable tracker, unknown model, or a malformed answer.
    """
    try:
        body = call_json("GET", spans_url(portal, model), timeout=timeout)
    except PortalHTTPError as exc:
        if exc.status == 404:
            raise TrackerError(f"the tracker at {portal} does not know the model {model!r}") from None
        raise TrackerError(f"the tracker at {portal} answered HTTP {exc.status}") from None
    except (OSError, ValueError) as exc:
        raise TrackerError(f"cannot ask the tracker at {portal}: {exc}") from None
    try:
        return [PeerInfo.from_tracker(s) for s in body["spans"] if s.get("url")]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TrackerError(f"the tracker at {portal} sent a malformed span list ({exc!r})") from None
