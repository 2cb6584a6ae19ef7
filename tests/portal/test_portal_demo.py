"""``make demo``'s account set-up: a demo login and a fresh node token on every run."""

from django.contrib.auth.models import User

from portal.accounts.models import NodeToken
from portal.management.commands.run_demo import DEMO_PASSWORD, DEMO_USER, prepare_demo_account
from portal.swarm.models import Node


def test_it_creates_the_demo_login_and_a_working_node_token(db):
    token = prepare_demo_account()
    user = User.objects.get(username=DEMO_USER)
    assert user.check_password(DEMO_PASSWORD) and user.is_superuser
    assert NodeToken.authenticate(token).user == user


def test_it_retires_the_previous_runs_token_and_nodes(db, register, heartbeat):
    first = prepare_demo_account()
    heartbeat(first, register(first).json()["id"])
    second = prepare_demo_account()
    assert NodeToken.authenticate(first) is None
    assert NodeToken.authenticate(second) is not None
    assert list(Node.objects.values_list("state", flat=True)) == ["offline"]
    assert User.objects.filter(username=DEMO_USER).count() == 1


def test_the_demo_nodes_keep_their_keys_and_rows_across_runs(
    db, settings, tmp_path, monkeypatch, node_client, register
):
    """#21 item 4: `make demo` gives node i the key file node-<i>.key under its home, so a second run (a new
    token, new ports) brings back the same node rows instead of three more."""
    import swarmnode.launcher as launcher
    from portal.management.commands.run_demo import demo_identity_dir
    from swarmnode.trust.identity import NodeIdentity

    settings.VAR_DIR = tmp_path
    started = []
    monkeypatch.setattr(launcher, "start_node", lambda model, blocks, **kw: started.append(kw["extra_args"]))
    launcher.LocalSwarm("smollm2", 30, 3, identity_dir=demo_identity_dir(), share_machine=False).start()
    keys = [args[args.index("--identity") + 1] for args in started]
    assert sorted(keys) == [str(tmp_path / "demo" / "identities" / f"node-{i}.key") for i in range(3)]

    def run(port: int) -> int:
        token = prepare_demo_account()
        identity = NodeIdentity.load_or_create(keys[0])
        nonce = node_client(token).post("/api/v1/nodes/key-challenge/", {}, format="json").json()["nonce"]
        proof = {"nonce": nonce, "signature": identity.prove_key(nonce)}
        url = f"ws://127.0.0.1:{port}/layerswarm/v1"
        response = register(token, url=url, public_key=identity.public_key, key_proof=proof)
        assert response.status_code in (200, 201), response.content
        return response.json()["id"]

    assert run(40001) == run(40002)
    assert Node.objects.count() == 1


def test_each_further_model_of_the_demo_gets_its_own_token(db, register):
    """``run_demo --models``: 3 nodes of 3 models are 9 nodes, over one token's SWARM_MAX_NODES_PER_TOKEN (8)."""
    first, gemma = prepare_demo_account(), prepare_demo_account("gemma3-270m")
    assert NodeToken.authenticate(first) != NodeToken.authenticate(gemma)
    assert NodeToken.authenticate(first) is not None and NodeToken.authenticate(gemma) is not None
    again = prepare_demo_account()  # the next run: every model's old token goes
    assert NodeToken.authenticate(first) is None and NodeToken.authenticate(gemma) is None
    assert NodeToken.authenticate(again) is not None
