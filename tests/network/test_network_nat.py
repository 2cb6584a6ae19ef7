"""A real NAT (spec §9.3): a node in a 'home' network namespace behind a MASQUERADE router that drops
inbound connections finds out it is unreachable, serves through a relay in the 'public' namespace, and
a client there generates exactly the tokens a direct client in the home network gets.

    public 198.51.100.0/24           router                       home 192.0.2.0/24
    relay  198.51.100.1  <--veth-->  198.51.100.2 | 192.0.2.1  <--veth-->  node 192.0.2.2
    client (same ns)                 MASQUERADE out, new inbound dropped

Needs root, ``ip`` (iproute2) and ``iptables`` (``.ci/run`` installs it); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from swarmnode.launcher import start_node, start_relay

pytestmark = [pytest.mark.slow, pytest.mark.model]

PUB, HOME = "198.51.100.1", "192.0.2.2"


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the NAT test builds network namespaces and needs root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"the NAT test needs `{tool}` (apt-get install -y iproute2 iptables; .ci/run does)"
    return None


class Nat:
    """Three namespaces: public, router (NAT + inbound drop), home."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.pub, self.rtr, self.home = f"lsp{tag}", f"lsr{tag}", f"lsh{tag}"

    def ns(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return _sh("ip", "netns", "exec", name, *cmd, check=check)

    def up(self) -> Nat:
        for name in (self.pub, self.rtr, self.home):
            _sh("ip", "netns", "add", name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        # veth pairs are created in the router namespace, then one end moves out.
        self.ns(self.rtr, "ip", "link", "add", "wan", "type", "veth", "peer", "name", "pub0")
        self.ns(self.rtr, "ip", "link", "add", "lan", "type", "veth", "peer", "name", "home0")
        self.ns(self.rtr, "ip", "link", "set", "pub0", "netns", self.pub)
        self.ns(self.rtr, "ip", "link", "set", "home0", "netns", self.home)
        self.ns(self.pub, "ip", "addr", "add", f"{PUB}/24", "dev", "pub0")
        self.ns(self.rtr, "ip", "addr", "add", "198.51.100.2/24", "dev", "wan")
        self.ns(self.rtr, "ip", "addr", "add", "192.0.2.1/24", "dev", "lan")
        self.ns(self.home, "ip", "addr", "add", f"{HOME}/24", "dev", "home0")
        for name, dev in ((self.pub, "pub0"), (self.rtr, "wan"), (self.rtr, "lan"), (self.home, "home0")):
            self.ns(name, "ip", "link", "set", dev, "up")
        self.ns(self.home, "ip", "route", "add", "default", "via", "192.0.2.1")
        # The public side knows the way to the home network, so inbound packets do reach the router: it is
        # the router that refuses them, like a home router does.
        self.ns(self.pub, "ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.2")
        self.ns(self.rtr, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        ipt = ("iptables", "-w", "5")
        self.ns(self.rtr, *ipt, "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-o", "wan", "-j", "MASQUERADE")
        self.ns(self.rtr, *ipt, "-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack", "--ctstate",
                "ESTABLISHED,RELATED", "-j", "ACCEPT")  # fmt: skip
        self.ns(self.rtr, *ipt, "-A", "FORWARD", "-i", "wan", "-o", "lan", "-j", "DROP")
        return self

    def down(self) -> None:
        for name in (self.pub, self.rtr, self.home):
            _sh("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="module")
def nat():
    why = _why_not()
    if why:
        pytest.skip(why)
    net = Nat()
    try:
        net.up()
    except subprocess.CalledProcessError as exc:
        net.down()
        pytest.skip(f"cannot build the namespaces here ({' '.join(exc.cmd[:6])}...: {exc.stderr.strip()[:200]})")
    yield net
    net.down()


CLIENT = textwrap.dedent(
    """
    import json, sys, torch
    from swarmnode.client import AutoDistributedModelForCausalLM
    from swarmnode.client.remote import RemoteError, RemoteSpan
    url, direct = sys.argv[1], sys.argv[2]
    try:
        RemoteSpan(direct, timeout=3).close()
        dialled = "reachable"
    except RemoteError as exc:
        dialled = exc.code
    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=[url])
    ids = model.tokenizer("The old lighthouse keeper", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    print(json.dumps({"tokens": out[0].tolist(), "relay": model.peers[0].relay, "direct": dialled}))
    """
)


def _client(nat: Nat, ns: str, url: str, direct: str) -> dict:
    result = nat.ns(ns, sys.executable, "-c", CLIENT, url, direct, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _doctor(nat: Nat, ns: str, env: dict[str, str]) -> dict[str, dict]:
    cmd = ("env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "swarmnode", "doctor", "--json")
    result = nat.ns(ns, *cmd, "--no-speed", "--config", os.devnull, check=False)
    assert result.stdout, result.stderr[-3000:]
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_it_serves_a_node_behind_nat_through_a_relay_with_the_tokens_of_a_direct_run(nat, tmp_path):
    relay = start_relay(
        extra_args=["--host", "0.0.0.0", "--public-host", PUB], log_path=tmp_path / "relay.log",
        wrap=["ip", "netns", "exec", nat.pub],
    )  # fmt: skip
    node = None
    try:
        args = ["--backend", "torch", "--dtype", "float32", "--no-measure", "--host", "0.0.0.0"]
        args += ["--public-host", HOME, "--relay", "auto", "--relays", relay.url]
        node = start_node(
            "smollm2", "0:30", extra_args=args, log_path=tmp_path / "node.log",
            wrap=["ip", "netns", "exec", nat.home], until="relayed",
        )  # fmt: skip
        log = (tmp_path / "node.log").read_text()
        # The node names its home address, but its link comes from the router's: the relay refuses to dial a URL
        # that is not the address it hears from (§9.3), which is what the router would have dropped anyway.
        assert "is not reachable from outside" in log
        assert "not_peer_address" in (tmp_path / "relay.log").read_text()
        assert node.address.startswith(relay.url + "/")
        public = _client(nat, nat.pub, node.address, node.url)
        home = _client(nat, nat.home, node.url, node.url)  # a client on the home network dials the node directly
        assert public["direct"] in ("unavailable", "timeout")  # the NAT does drop inbound connections
        assert public["relay"] and not home["relay"] and home["direct"] == "reachable"
        assert public["tokens"] == home["tokens"]
        # `swarmnode doctor` on the home machine, with the node's settings, says it needs a relay.
        env = {"SWARMNODE_HOST": "0.0.0.0", "SWARMNODE_PUBLIC_HOST": HOME, "SWARMNODE_RELAYS": relay.url}
        report = _doctor(nat, nat.home, env)
        assert report["reachability"]["status"] == "WARN", report["reachability"]
        assert "needs a relay" in report["reachability"]["detail"]
        assert "forward TCP port" in report["reachability"]["fix"]
    finally:
        for proc in (node, relay):
            if proc is not None:
                proc.stop()
