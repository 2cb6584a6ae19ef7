"""Choosing a chain of spans that covers every block of the model."""

from __future__ import annotations

from collections import deque

from swarmnode.client.remote import PeerInfo, RemoteError, RemoteSpan


class SwarmNotCovering(Exception):
    """No chain of known nodes covers the whole model.

    Attributes:
        uncovered: blocks no node serves.
    """

    def __init__(self, model: str, num_blocks: int, uncovered: list[int]) -> None:
        ranges = _ranges(uncovered)
        msg = f"no chain of nodes covers all {num_blocks} blocks of {model!r}"
        msg += f"; uncovered blocks: {ranges}" if uncovered else "; spans do not line up end to start"
        super().__init__(msg)
        self.uncovered = uncovered


def _ranges(blocks: list[int]) -> str:
    out, start = [], None
    for i, b in enumerate(blocks):
        if start is None:
            start = b
        if i + 1 == len(blocks) or blocks[i + 1] != b + 1:
            out.append(f"{start}-{b}" if start != b else str(b))
            start = None
    return ", ".join(out)


def uncovered_blocks(peers: list[PeerInfo], num_blocks: int) -> list[int]:
    """Blocks that no peer serves."""
    covered = set()
    for p in peers:
        covered.update(range(p.start_block, p.end_block))
    return [b for b in range(num_blocks) if b not in covered]


def find_chain(
    peers: list[PeerInfo], num_blocks: int, model: str = "", exclude: set[str] = frozenset()
) -> list[PeerInfo]:
    """The chain with the fewest hops whose spans line up from block 0 to ``num_blocks``.

    Raises:
        SwarmNotCovering: no such chain exists.
    """
    usable = [p for p in peers if p.url not in exclude and (not model or p.model == model)]
    by_start: dict[int, list[PeerInfo]] = {}
    for p in usable:
        by_start.setdefault(p.start_block, []).append(p)
    prev: dict[int, PeerInfo | None] = {0: None}
    queue = deque([0])
    while queue:
        block = queue.popleft()
        if block == num_blocks:
            break
        for p in by_start.get(block, []):
            if p.end_block not in prev:
                prev[p.end_block] = p
                queue.append(p.end_block)
    if num_blocks not in prev:
        raise SwarmNotCovering(model, num_blocks, uncovered_blocks(usable, num_blocks))
    chain, block = [], num_blocks
    while block:
        p = prev[block]
        assert p is not None
        chain.append(p)
        block = p.start_block
    return chain[::-1]


def probe_peers(urls: list[str], timeout: float = 10.0) -> tuple[list[PeerInfo], dict[str, str]]:
    """Ask each URL what it serves; return the answers and the errors of those that failed."""
    infos, errors = [], {}
    for url in urls:
        try:
            span = RemoteSpan(url, timeout=timeout)
            try:
                infos.append(span.info())
            finally:
                span.close()
        except RemoteError as exc:
            errors[url] = str(exc)
    return infos, errors
