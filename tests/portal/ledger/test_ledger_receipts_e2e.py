"""Receipts end to end: real portal (daphne + Celery beat), two real nodes announcing with a node token, a
client with a registered key. The client generates and closes; each node countersigns and posts the
receipt; Celery settles it; the node owner is credited exactly the block-tokens served (spec §8)."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from portal.processes import create_user_with_node_token, live_portal, manage
from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.testing.polling import wait_until
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import key_of

pytestmark = [pytest.mark.slow, pytest.mark.model]

GRANT = 0  # grants fund nothing payable (#17 finding 7): the payer pays with bought credits
DEPOSIT = 1_000_000


def _shell(env: dict, code: str) -> str:
    return manage(["shell", "-c", code], env).stdout.strip().splitlines()[-1]


def _balances(env: dict) -> dict:
    code = (
        "import json\n"
        "from django.contrib.auth.models import User\n"
        "from portal.ledger.books import balance_of\n"
        "from portal.ledger.models import Receipt\n"
        "print(json.dumps({'volunteer': balance_of(User.objects.get(username='volunteer')),"
        " 'payer': balance_of(User.objects.get(username='payer')),"
        " 'settled': list(Receipt.objects.filter(status='settled').values_list('receipt_id', 'block_tokens')),"
        " 'pending': Receipt.objects.filter(status='pending').count()}))\n"
    )
    return json.loads(_shell(env, code))


def test_it_credits_the_node_owner_exactly_the_block_tokens_served(tmp_path):
    env = {
        "LEDGER_STARTING_GRANT": str(GRANT),
        "LEDGER_SETTLE_EVERY": "1",
        "LEDGER_ESCROW_MIN_AGE": "0",
        "LEDGER_ESCROW_RELEASE_SCORE": "0",
    }
    with live_portal(tmp_path, f"layerswarm_receipts_{os.getpid()}", env=env) as portal:
        token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
        client = NodeIdentity.generate()
        _shell(
            portal.env,
            "from django.contrib.auth.models import User\n"
            "from portal.ledger.receipts import register_client_key\n"
            "from portal.ledger.books import deposit\n"
            "payer = User.objects.create_user('payer')\n"
            f"deposit(payer, {DEPOSIT}, reference='bank:payer')\n"
            f"print(register_client_key(payer, {key_of(client)!r}, 'script').pk)\n",
        )
        swarm = LocalSwarm(
            "smollm2",
            30,
            2,
            extra_args=["--portal", portal.url, "--token", token, "--backend", "torch"],
            log_dir=tmp_path,
        )
        with swarm:

            def spans():
                url = f"{portal.url}/api/v1/models/smollm2/spans/"
                with urllib.request.urlopen(url, timeout=10) as r:
                    return [s for s in json.loads(r.read())["spans"] if s["public_key"]]

            wait_until(lambda: len(spans()) == 2, 90, "both nodes to register with their keys")
            model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal.url, identity=client)
            ids = model.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
            model.generate(ids, max_new_tokens=6, do_sample=False)

            # Each node ran the prompt and every generated token but the last through its 15 blocks.
            positions = ids.shape[1] + 6 - 1
            receipts = sorted(model.receipts, key=lambda s: s.receipt.start_block)
            assert [(s.receipt.start_block, s.receipt.end_block) for s in receipts] == [(0, 15), (15, 30)]
            assert all(s.receipt.tokens == positions for s in receipts)
            served = sum(s.receipt.block_tokens for s in receipts)
            assert served == positions * 30

            # The nodes posted their countersigned copies; Celery beat settles them.
            after = wait_until(
                lambda: (b := _balances(portal.env))["pending"] == 0 and len(b["settled"]) == 2 and b,
                60,
                "both receipts to be settled",
            )
            assert sorted(map(tuple, after["settled"])) == sorted(
                (s.receipt.receipt_id, s.receipt.block_tokens) for s in receipts
            )
            assert after["volunteer"] == GRANT + served
            assert after["payer"] == GRANT + DEPOSIT - served

            # The client posting its own copy again changes nothing (settled once per receipt id).
            api_key = _shell(
                portal.env,
                "from django.contrib.auth.models import User\n"
                "from portal.accounts.models import ApiKey\n"
                "print(ApiKey.create_for(User.objects.get(username='payer'), 'k')[1])\n",
            )
            request = urllib.request.Request(
                f"{portal.url}/api/v1/receipts/",
                data=json.dumps(receipts[0].to_json()).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200 and json.loads(r.read())["status"] == "settled"
            assert _balances(portal.env)["volunteer"] == GRANT + served
