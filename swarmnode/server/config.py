"""``NodeConfig``: the one configuration object a node passes down."""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmnode.protocol import Limits

WS_PATH = "/layerswarm/v1"


def parse_blocks(text: str, num_blocks: int | None = None) -> tuple[int, int]:
    """Parse ``START:END`` (END exclusive).

    Raises:
        ValueError: not two integers with 0 <= START < END (<= num_blocks when given).
    """
    try:
        start_s, end_s = text.split(":")
        start, end = int(start_s), int(end_s)
    except ValueError:
        raise ValueError(f"--blocks must look like START:END, e.g. 0:10; got {text!r}") from None
    if not 0 <= start < end or (num_blocks is not None and end > num_blocks):
        limit = f" (the model has {num_blocks} blocks)" if num_blocks is not None else ""
        raise ValueError(f"--blocks {text} is not a non-empty range inside the model{limit}")
    return start, end


@dataclass
class NodeConfig:
    """Everything a node needs to know to serve a span."""

    model: str = "smollm2"  # registry name, checkpoint dir or .gguf path
    blocks: str | None = None  # "START:END" or "auto"; None: auto with --portal/--peers, else the whole model
    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port (printed in the ready line)
    public_host: str | None = None  # host to advertise in URLs when binding 0.0.0.0
    device: str = "cpu"  # cpu, cuda[:N] or auto
    dtype: str = "auto"  # compute precision: auto, float32, bfloat16, float16, int8
    backend: str = "auto"  # auto, torch or onnxruntime
    num_blocks: str | None = None  # with no --blocks: "auto" (what fits --max-memory) or a count from block 0
    max_memory: str | None = None  # memory budget for weights + KV cache, e.g. "2GB"
    max_batch: int = 16  # most decoding steps of different sessions run in one pass
    prefill_chunk: int = 512  # long prompts are computed in chunks of this many tokens
    batch_window: float = 0.03  # seconds a decoding batch waits for recently active sessions' next steps
    machine_lock: str | None = None  # file co-located nodes lock around each pass (take turns on the cores)
    num_threads: int | None = None  # torch intra-op threads; None = all cores
    small_step_threads: int | None = None  # threads for decoding steps (few tokens); None = num_threads
    cache_tokens: int = 32768  # KV-cache budget across sessions, in tokens
    prefix_cache_tokens: int = 1024  # positions of recent first prompts kept for reuse (spec §4.9); 0: none
    idle_timeout: float = 300.0  # seconds before an unused session is evicted
    limits: Limits = field(default_factory=Limits)
    portal: str | None = None  # tracker to announce to, e.g. http://127.0.0.1:8000 (None: don't announce)
    token: str | None = None  # node token from the portal's "Contribute a GPU" page
    identity: str | None = None  # key file (created if missing); None: a fresh key pair for this process
    peers: tuple[str, ...] = ()  # other nodes' URLs to learn the swarm from when there is no portal (--blocks auto)
    dht: tuple[str, ...] = ()  # DHT bootstrap multiaddrs (docs/dht.md): announce there, read spans from there
    dht_only: bool = False  # with dht: no portal tracker (a portal-less swarm), unless the DHT cannot load here
    dht_ttl: float = 120.0  # seconds a DHT record lives; re-announced every third of it
    dht_port: int = 0  # TCP port of the node's DHT peer (0: any free one)
    rebalance_interval: float = 0.0  # seconds between rebalancing checks (±20 % jitter); 0 = never move
    rebalance_margin: float = 0.2  # move only if the swarm's bottleneck rises by more than this fraction
    drain_timeout: float = 120.0  # seconds to let open sessions finish before moving
    relay: str = "auto"  # auto: relayed only if a relay cannot dial us back (spec §9.3); always; never
    relays: tuple[str, ...] = ()  # relay base URLs (besides the portal's own), best first
    relay_capacity: int = 0  # act as a relay for up to this many nodes (0: not a relay)
    corrupt_fraction: float = 0.0  # tests/demos only (hidden flag): perturb this share of step outputs
    corrupt_seed: int | None = None  # RNG seed of the perturbations (None: random)
    measure_throughput: bool = True  # measure (or read from the cache) tokens/s at start, for routing
    # -- what one stranger may take (spec §6.5): a node on the open network serves people it does not know
    max_connections_per_ip: int = 256  # open websockets from one address (a gateway opens one per session); 0: no cap
    max_sessions_per_connection: int = 32  # open sessions one connection may hold at once; 0: no cap
    max_forward_tokens: int = 16384  # rows x positions of one cache-less forward (audits, scoring; §6.5); 0: no cap
    connection_cache_share: float = 0.5  # most of the KV budget one connection's sessions may hold (its first
    # session may always take what is free, so one long context still fits); 1.0: no cap
    # -- push (spec §7.5): the next hops a node dials for a client's pushed step
    push_private: str = "auto"  # dial private/loopback next hops: allow, refuse, auto (allow iff we bind to one)
    push_unlisted: str = "auto"  # dial hops outside the swarm view whose key the route names: allow, refuse,
    # auto (allow iff the node has no tracker/peers and serves on a private address: a local swarm)
    push_max_links: int = 64  # open push links to other nodes kept at once (least recently used closed first)
    push_view_refresh: float = 30.0  # seconds between re-reads of the swarm when a route names an unknown node
    # -- TLS (spec §1.1): serve wss:// with this certificate chain and key (PEM files); None: plain ws://
    tls_cert: str | None = None
    tls_key: str | None = None
    # -- observability
    metrics: str = "loopback"  # who may GET /metrics on the node's port: off, loopback, public (server/metrics.py)
    log_format: str = "text"  # text or json (one JSON event per line: server/logs.py)
    # -- weights (issue #19, docs/weights.md): the object store, whose publishers to trust, what to seed
    store: str | None = None  # object store directory; None: $LAYERSWARM_HOME/store
    cache_size: str | None = None  # the store's size cap, e.g. "20GB"; None: half the free disk
    trust_keys: tuple[str, ...] = ()  # trusted publisher keys (ed25519:...) or key files, besides the portal's
    seed_cache: bool = False  # also send peers store objects this node does not serve (else only its own blocks)
