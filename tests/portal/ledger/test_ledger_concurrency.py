"""8 settlement worker processes race over 10,000 receipts on real PostgreSQL; one is SIGKILLed mid-way.

Each worker gets an overlapping, shuffled share of the receipts (four in ten are in two or three
workers' lists: duplicated and replayed tasks), re-submits a few hundred receipts that are stored
already (duplicate deliveries from nodes and clients), and settles its list with
``settle_receipt``. One worker is killed with SIGKILL after a few hundred settlements, possibly
inside a transaction. Then one ``settle_pending`` run (the next beat tick) picks up what the dead
worker left. The totals must be exact: every receipt paid once, every owner credited and every payer
debited exactly what the generated receipts say, every transaction balanced.

Run as a script, this file is one worker: ``python test_ledger_concurrency.py WORKFILE``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

RECEIPTS = 10_000
WORKERS = 8
KILL_AFTER = 300  # settlements done by the victim before it is killed


def worker(workfile: str) -> None:
    """Settle the receipt ids in ``workfile`` (after re-submitting its duplicate bodies); print progress."""
    import django

    django.setup()
    from portal.ledger.receipts import submit_receipt
    from portal.ledger.settlement import settle_receipt

    work = json.loads(Path(workfile).read_text())
    for body in work["resubmit"]:
        _, created = submit_receipt(body)
        assert not created
    print("resubmitted", flush=True)
    for n, pk in enumerate(work["settle"], 1):
        settle_receipt(pk)
        if n % 50 == 0:
            print(f"settled {n}", flush=True)
    print("done", flush=True)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_settles_exactly_once_with_8_racing_workers_and_one_killed(
    ledger_settings, tmp_path, django_user_model, node_factory, identities
):
    from django.db import connection
    from django.db.models import Sum

    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL (row locks across processes): run with "
            "DATABASE_URL=postgres://postgres@127.0.0.1:5432/layerswarm_NAME, as `make test` does for tests/portal"
        )
    from portal.ledger.books import balance, system_account, user_account
    from portal.ledger.models import ClientKey, Entry, Receipt, Transaction
    from portal.ledger.settlement import settle_pending
    from swarmnode.trust.identity import NodeIdentity
    from swarmnode.trust.receipts import SignedReceipt, UsageReceipt, key_of

    ledger_settings.LEDGER_STARTING_GRANT = 10**9  # payers never run short: every receipt must be paid
    ledger_settings.LEDGER_ESCROW_MIN_AGE = 3600  # young nodes' earnings go to escrow, old nodes' straight through
    owners = [django_user_model.objects.create_user(f"owner{i}") for i in range(3)]
    payers = [django_user_model.objects.create_user(f"payer{i}") for i in range(4)]
    nodes = []
    for i in range(6):
        identity = identities[i]
        node = node_factory(
            owners[i % 3], identity, blocks=(0, 10) if i % 2 else (10, 30), age_s=60 if i < 2 else 86400
        )
        nodes.append((node, identity))
    clients = [NodeIdentity.generate() for _ in range(5)]
    for payer, client in zip(payers, clients, strict=False):
        ClientKey.objects.create(user=payer, key=key_of(client), name="client")
    ClientKey.objects.create(user=None, key=key_of(clients[4]), name="gateway")
    keys = {k.key: k for k in ClientKey.objects.all()}

    rng = random.Random(7)
    rows, bodies = [], []
    expected_earned, expected_paid = Counter(), Counter()
    for _ in range(RECEIPTS):
        node, node_identity = nodes[rng.randrange(6)]
        client = clients[rng.randrange(5)]
        r = UsageReceipt.new(
            session_id="s",
            model="smollm2",
            start_block=node.start_block,
            end_block=node.end_block,
            tokens=rng.randint(1, 300),
            client_key=key_of(client),
            node_key=key_of(node_identity),
        )
        signed = SignedReceipt(r, r.sign_as_client(client), r.sign_as_node(node_identity))
        bodies.append(signed.to_json())
        key = keys[r.client_key]
        rows.append(
            Receipt(
                receipt_id=r.receipt_id,
                session_id=r.session_id,
                model=r.model,
                start_block=r.start_block,
                end_block=r.end_block,
                tokens=r.tokens,
                block_tokens=r.block_tokens,
                client_key=key,
                node=node,
                earner=node.owner,
                issued_at=node.registered_at,
                receipt=r.to_text(),
                client_signature=signed.client_signature,
                node_signature=signed.node_signature,
            )
        )
        expected_earned[node.owner.pk] += r.block_tokens
        expected_paid[key.user_id] += r.block_tokens  # None: the gateway (system:rewards)
    Receipt.objects.bulk_create(rows, batch_size=1000)
    pks = list(Receipt.objects.order_by("id").values_list("id", flat=True))

    # A receipt goes to 1, 2 or 3 workers (duplicated tasks), in a different order in each; those only the
    # victim held and had not reached are left for the next tick.
    shares: list[list[int]] = [[] for _ in range(WORKERS)]
    for pk in pks:
        for w in rng.sample(range(WORKERS), rng.choices((1, 2, 3), weights=(6, 3, 1))[0]):
            shares[w].append(pk)
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "DATABASE_POOL": "0",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH", "")]),
        "LEDGER_ESCROW_MIN_AGE": "3600",
        "LEDGER_ESCROW_RELEASE_SCORE": "0.0",
        "LEDGER_STARTING_GRANT": str(10**9),
    }
    procs = []
    for w, share in enumerate(shares):
        rng.shuffle(share)
        workfile = tmp_path / f"work{w}.json"
        workfile.write_text(json.dumps({"settle": share, "resubmit": rng.sample(bodies, 40)}))
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, str(workfile)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=open(tmp_path / f"work{w}.log", "wb"),  # noqa: SIM115 - the child owns it
                text=True,
            )
        )
    started = time.monotonic()
    victim = procs[0]
    for line in victim.stdout:  # kill it mid-way, wherever it is
        if line.startswith("settled") and int(line.split()[1]) >= KILL_AFTER:
            os.kill(victim.pid, signal.SIGKILL)
            break
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    for w, proc in enumerate(procs[1:], 1):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, (tmp_path / f"work{w}.log").read_text()[-3000:]
        assert out.strip().endswith("done")
    raced_s = time.monotonic() - started
    left = Receipt.objects.filter(status="pending").count()
    settle_pending(limit=RECEIPTS)  # the next beat tick: picks up what only the dead worker held
    print(f"8 workers settled {RECEIPTS - left} receipts in {raced_s:.1f}s; the next tick settled {left}")

    assert left > 0  # the dead worker really left work behind
    assert Receipt.objects.filter(status="settled").count() == RECEIPTS
    assert Transaction.objects.filter(kind="receipt").count() == RECEIPTS
    unbalanced = Entry.objects.values("transaction_id").annotate(t=Sum("amount")).exclude(t=0)
    assert not unbalanced.exists()
    for owner in owners:
        got = Entry.objects.filter(transaction__kind="receipt", account__user=owner, amount__gt=0).aggregate(
            s=Sum("amount")
        )["s"]
        assert got == expected_earned[owner.pk]
    for payer in payers:
        assert 10**9 - balance(user_account(payer)) == expected_paid[payer.pk]
    assert -balance(system_account("system:rewards")) == expected_paid[None]


if __name__ == "__main__":
    worker(sys.argv[1])
