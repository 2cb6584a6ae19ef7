"""Emulated wide-area swarms on loopback: delaying proxies in front of real nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from swarmnode.testing.delay_proxy import DelayProxy, LinkShape


def node_port(url: str) -> int:
    """The port of a ``ws://host:port/path`` URL."""
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


@dataclass
class WanLinks:
    """For each RTT, one proxy in front of each node: ``urls[rtt_ms]`` is a chain reachable at that RTT."""

    node_urls: list[str]
    rtts_ms: list[float]
    bandwidth_bytes_per_s: float | None = None
    proxies: list[DelayProxy] = field(default_factory=list)
    urls: dict[float, list[str]] = field(default_factory=dict)

    def start(self) -> WanLinks:
        """Start every proxy."""
        for rtt in self.rtts_ms:
            shape = LinkShape(one_way_delay_s=rtt / 2000.0, bandwidth_bytes_per_s=self.bandwidth_bytes_per_s)
            chain = []
            for url in self.node_urls:
                proxy = DelayProxy(node_port(url), shape).start()
                self.proxies.append(proxy)
                chain.append(proxy.url_for(url))
            self.urls[rtt] = chain
        return self

    def stop(self) -> None:
        """Stop every proxy."""
        for p in self.proxies:
            p.stop()
        self.proxies = []

    def __enter__(self) -> WanLinks:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tokens_per_s(model, input_ids: torch.Tensor, new_tokens: int) -> tuple[float, list[int]]:
    """Greedy decoding speed after the first token, and the tokens."""
    out = model.generate(input_ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    return model.last_stats.tokens_per_s, out[0].tolist()
