"""The DHT engine: hivemind's Kademlia DHT (libp2p transport), run on a private event loop in one thread.

Imported only through :func:`swarmnode.dht.open_dht`, never at ``import swarmnode.dht``: hivemind pulls
in its libp2p daemon (``p2pd``, a Go binary shipped in its wheels for Linux and macOS) and ~3 s of imports.
Every value any peer stores or returns passes :class:`RecordValidator` (:func:`swarmnode.dht.records.verify`)
inside hivemind, and :meth:`DHTDiscovery.lookup` checks each record again before using it.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")  # hivemind logs every peer it meets at INFO

from hivemind.dht.node import DHTNode  # noqa: E402
from hivemind.dht.routing import DHTID  # noqa: E402
from hivemind.dht.storage import DHTLocalStorage, DictionaryDHTValue  # noqa: E402
from hivemind.dht.validation import DHTRecord, RecordValidatorBase  # noqa: E402
from hivemind.utils.serializer import MSGPackSerializer  # noqa: E402

from swarmnode.dht.records import (  # noqa: E402
    MAX_RECORDS_PER_KEY,
    InvalidRecord,
    block_key,
    block_keys,
    to_peer,
    verify,
)
from swarmnode.discovery import PeerInfo  # noqa: E402

log = logging.getLogger("swarmnode.dht")

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


class CappedStorage(DHTLocalStorage):
    """hivemind's local storage, holding at most ``max_subkeys`` live records under one key.

    A new node id under a full key is refused (a stranger minting keys cannot grow a peer's memory without
    bound); a record already held may still be refreshed, and expired ones make room again.
    """

    def __init__(self, maxsize: int | None = None, max_subkeys: int = MAX_RECORDS_PER_KEY) -> None:
        super().__init__(maxsize)
        self.max_subkeys = max_subkeys

    def store_subkey(self, key, subkey, value, expiration_time) -> bool:
        """Store ``subkey`` under ``key`` as hivemind does, unless ``key`` already holds ``max_subkeys`` others."""
        held = self.get(key)
        if held is not None and isinstance(held.value, DictionaryDHTValue):
            if subkey not in held.value and len(held.value) >= self.max_subkeys:
                return False
        return super().store_subkey(key, subkey, value, expiration_time)


class _DaemonLoop(asyncio.SelectorEventLoop):
    """The DHT thread's event loop: the libp2p daemon it starts (``p2pd``) dies with this process.

    On Linux the child asks the kernel for SIGTERM when its parent goes (``PR_SET_PDEATHSIG``), so a SIGKILLed
    node or portal leaves no daemon behind. hivemind starts the daemon with ``create_subprocess_exec`` on the
    running loop, which lands here. (The signal follows the forking thread: this loop's, which lives until
    :meth:`DHTDiscovery.close` stops the daemon anyway.)
    """

    async def subprocess_exec(self, protocol_factory, program, *args, **kwargs):
        if _LIBC is not None and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = _die_with_parent(os.getpid())
        return await super().subprocess_exec(protocol_factory, program, *args, **kwargs)


def _die_with_parent(parent: int):
    def preexec() -> None:  # runs in the child between fork and exec: no locks, no logging
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: nobody will send the signal
            os._exit(1)

    return preexec


class RecordValidator(RecordValidatorBase):
    """hivemind's hook: a peer stores or returns only values :func:`~swarmnode.dht.records.verify` accepts."""

    def validate(self, record: DHTRecord) -> bool:
        """True if ``record`` is a valid signed node record for its key and subkey."""
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
            value = MSGPackSerializer.loads(record.value)
            if not isinstance(subkey, str):
                return False
            fields = verify(None, subkey, value, dht_expiration=record.expiration_time)
            # hivemind hands us the key's hash only: it must be one of the record's own block keys.
            return record.key in {DHTID.generate(source=k).to_bytes() for k in block_keys(fields)}
        except InvalidRecord as exc:
            log.debug("dropped a DHT record: %s", exc)
            return False
        except Exception:  # whatever a stranger's bytes do to the decoders: not stored, not used
            return False


def _capped(storage: DHTLocalStorage, maxsize) -> CappedStorage:
    """A :class:`CappedStorage` holding what ``storage`` held (records stored while joining)."""
    capped = CappedStorage(None if maxsize in (None, float("inf")) else int(maxsize))
    for key, item in storage.items():
        capped.store(key, item.value, item.expiration_time)
    return capped


class DHTDiscovery:
    """One DHT peer: join through ``initial_peers``, then :meth:`announce` and :meth:`lookup`.

    Args:
        initial_peers: multiaddrs of running DHT peers (``/ip4/H/tcp/P/p2p/Qm...``); none: a first (bootstrap) peer.
        host: the address the peer listens on.
        port: its TCP port (0: any free one).
        client_mode: only ask, never answer (a client behind NAT); else a full DHT peer.
        announce_host: the address other peers dial (default ``host``).
        identity_path: a libp2p key file (created if missing) for a stable peer id (a bootstrap peer's addresses).
        start_timeout: seconds to wait for the libp2p daemon and the first answer of an initial peer.

    Raises:
        OSError: no initial peer answered, or the daemon did not start (the message says which).
    """

    def __init__(
        self,
        initial_peers: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_mode: bool = False,
        announce_host: str | None = None,
        identity_path: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._loop = _DaemonLoop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dht", daemon=True)
        self._thread.start()
        ip = "ip6" if ":" in host else "ip4"
        options = {"host_maddrs": [f"/{ip}/{host}/tcp/{port}"], "identity_path": identity_path}
        if announce_host:
            options["announce_maddrs"] = [f"/{'ip6' if ':' in announce_host else 'ip4'}/{announce_host}/tcp/{port}"]
        try:
            self.node: DHTNode = self._call(
                DHTNode.create(
                    initial_peers=list(initial_peers),
                    client_mode=client_mode,
                    record_validator=RecordValidator(),
                    cache_locally=False,  # a lookup asks the swarm, so a stopped node's tombstone is seen at once
                    cache_nearest=0,
                    **options,
                ),
                start_timeout,
            )
        except BaseException as exc:
            self._stop_loop()
            raise OSError(f"cannot join the DHT through {list(initial_peers) or 'no peer'}: {exc}") from None
        # The per-key cap on what this peer stores for others (its own storage and its cache alike).
        protocol = self.node.protocol
        protocol.storage = _capped(protocol.storage, None)
        protocol.cache = _capped(protocol.cache, protocol.cache.maxsize)

    def _call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def visible_addrs(self) -> list[str]:
        """The multiaddrs other peers reach this one at (what ``--dht`` accepts)."""
        return [str(a) for a in self._call(self.node.get_visible_maddrs(), 10.0)]

    def announce(self, key_value: tuple[dict, bytes], timeout: float = 30.0) -> int:
        """Store a signed record under every block key of its span (subkey: the node id).

        Args:
            key_value: ``(record, value)`` from :func:`swarmnode.dht.records.signed`.

        Returns:
            How many block keys took it (0: no peer stored it).
        """
        from swarmnode.dht.records import node_id

        record, value = key_value
        keys = block_keys(record)
        sub = node_id(record["public_key"])
        stored = self._call(
            self.node.store_many(keys, [value] * len(keys), record["expires"], subkeys=[sub] * len(keys)), timeout
        )
        return sum(1 for ok in stored.values() if ok)

    def lookup(self, model: str, blocks: range, timeout: float = 30.0) -> list[PeerInfo]:
        """The nodes serving any of ``blocks`` of ``model``, from their valid records (tombstones left out).

        Every record is verified again here; at most :data:`MAX_RECORDS_PER_KEY` per key are read.
        """
        keys = [block_key(model, b) for b in blocks]
        # Latest, not first: every replica's entries are merged, so a newer tombstone wins over an older record.
        found = self._call(self.node.get_many(keys, sufficient_expiration_time=float("inf")), timeout)
        now = time.time()
        peers: dict[str, PeerInfo] = {}
        for key in keys:
            entry = found.get(key)
            if entry is None or not isinstance(entry.value, dict):
                continue
            for sub, item in list(entry.value.items())[:MAX_RECORDS_PER_KEY]:
                try:
                    record = verify(key, sub, item.value, now=now, dht_expiration=item.expiration_time)
                except InvalidRecord as exc:
                    log.info("dropped a DHT record under %s: %s", key[:120], exc)
                    continue
                if record["state"] != "offline":
                    peers[sub] = to_peer(record)
        return list(peers.values())

    def watch(self, model: str, blocks: range, interval: float = 5.0) -> Iterator[list[PeerInfo]]:
        """Yield :meth:`lookup`'s answer now and each time it changes (polled every ``interval`` seconds)."""
        last = None
        while True:
            peers = self.lookup(model, blocks)
            current = sorted((p.public_key, p.url, p.start_block, p.end_block, p.state) for p in peers)
            if current != last:
                last = current
                yield peers
            time.sleep(interval)

    def close(self) -> None:
        """Leave the DHT and stop the libp2p daemon."""
        try:
            self._call(self.node.shutdown(), 10.0)
        except Exception as exc:
            log.info("DHT shutdown: %s", exc)
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_rest() -> None:  # hivemind's background refreshers, so none is destroyed while pending
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self._call(cancel_rest(), 5.0)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
