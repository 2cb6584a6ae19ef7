"""Relays announce their load (spec §9.5) and nodes attach to the least loaded one."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from swarmnode.protocol import relay as envelope
from swarmnode.relaying.choice import order_by_load, relay_load
from swarmnode.server.relay_hub import RelayLimits, serve_relay
from swarmnode.trust.identity import NodeIdentity


async def _relay(capacity: int):
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_relay("127.0.0.1", 0, RelayLimits(capacity=capacity), ready=ready))
    hub = await ready
    return hub, task


async def _attach(url: str):
    node = NodeIdentity.generate()
    ws = await connect(url)
    await ws.send(envelope.pack("relay_hello", id=1, public_key=node.public_key))
    challenge = envelope.unpack(await ws.recv(), 1 << 16)
    proof = node.sign(envelope.proof_message(challenge["nonce"], challenge["relay"], node.public_key))
    await ws.send(envelope.pack("relay_proof", id=1, signature=proof))
    assert envelope.unpack(await ws.recv(), 1 << 16)["type"] == "relay_registered"
    return ws


def test_it_orders_relays_by_announced_load_and_puts_full_or_dead_ones_last():
    async def scenario():
        (busy, t1), (idle, t2), (small, t3) = await _relay(4), await _relay(4), await _relay(1)
        links = [await _attach(busy.base_url), await _attach(busy.base_url), await _attach(small.base_url)]
        try:
            assert await relay_load(busy.base_url) == 0.5
            assert await relay_load(small.base_url) == 1.0
            dead = "ws://127.0.0.1:9/layerswarm/v1/relay"
            ranked = await order_by_load([dead, small.base_url, busy.base_url, idle.base_url])
            assert ranked == [idle.base_url, busy.base_url, small.base_url, dead]
            refused = await connect(small.base_url)  # full: a further node is refused with relay_full
            await refused.send(envelope.pack("relay_hello", id=1, public_key=NodeIdentity.generate().public_key))
            assert envelope.unpack(await refused.recv(), 1 << 16)["code"] == "relay_full"
            await refused.close()
        finally:
            for ws in links:
                await ws.close()
            for task in (t1, t2, t3):
                task.cancel()

    asyncio.run(scenario())


def _limits(**kw) -> RelayLimits:
    return RelayLimits(capacity=4, **kw)


async def _relay_with(limits: RelayLimits):
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_relay("127.0.0.1", 0, limits, ready=ready))
    return await ready, task


def test_it_slows_a_node_over_its_frame_rate_instead_of_buffering():
    """§9.6: over the per-node frame rate, forwarding waits (the counter of waited seconds grows)."""

    async def scenario():
        hub, task = await _relay_with(_limits(node_frames_per_s=10.0))
        link = await _attach(hub.base_url)
        try:
            kid = next(iter(hub.nodes))
            client = await connect(f"{hub.base_url}/{kid}")
            opened = envelope.unpack(await link.recv(), 1 << 16)
            for i in range(40):  # a burst of 10 passes at once, the other 30 need 3 s more at 10/s
                await client.send(b"frame %d" % i)
            for _ in range(40):
                assert envelope.unpack(await link.recv(), 1 << 16)["conn"] == opened["conn"]
            assert hub.stats["throttled_s"] > 1.0 and hub.stats["frames"] == 40
            await client.close()
        finally:
            await link.close()
            task.cancel()

    asyncio.run(scenario())


def test_it_disconnects_a_client_that_does_not_read_instead_of_growing_memory():
    """§9.6: a bounded queue per client; the node hears relay_close 'client buffer full' and goes on."""

    async def scenario():
        hub, task = await _relay_with(_limits(client_queue_frames=8, node_bytes_per_s=0, relay_bytes_per_s=0))
        link = await _attach(hub.base_url)
        try:
            kid = next(iter(hub.nodes))
            lazy = await connect(f"{hub.base_url}/{kid}", max_queue=1, max_size=None)  # never reads
            conn = envelope.unpack(await link.recv(), 1 << 16)["conn"]
            big = bytes(1 << 20)
            closed = None
            for _ in range(200):  # far more than socket buffers hold
                await link.send(envelope.pack_data(conn, big))
                try:
                    msg = envelope.unpack(await asyncio.wait_for(link.recv(), 0.01), 1 << 16)
                except TimeoutError:
                    continue
                if msg["type"] == "relay_close":
                    closed = msg
                    break
            assert closed is not None and closed["reason"] == "client buffer full"
            assert hub.stats["dropped_clients"] == 1 and not hub.nodes[kid].clients
            await lazy.close()
        finally:
            await link.close()
            task.cancel()

    asyncio.run(scenario())
