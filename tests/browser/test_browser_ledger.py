"""In a real browser: a node owner sees their credits and their node's earnings and reputation as charts,
requests a payout, and an admin approves it from the review page (real daphne, real chromium)."""

import os

import pytest

from portal.processes import live_portal, manage

pytestmark = [pytest.mark.slow]

SEED = """
import datetime as dt
from django.contrib.auth.models import User
from django.utils import timezone
from portal.accounts.models import NodeToken
from portal.ledger.books import deposit
from portal.ledger.models import ClientKey
from portal.ledger.receipts import submit_receipt
from portal.ledger.settlement import settle_pending
from portal.reputation.scoring import record_audit
from portal.swarm.models import Node, SwarmModel
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import SignedReceipt, UsageReceipt, key_of

erin = User.objects.create_user("erin", "erin@example.com", "erin-Passphrase-9")
User.objects.create_superuser("boss", "boss@example.com", "boss-Passphrase-9")
payer = User.objects.create_user("frank")
model = SwarmModel.objects.get_or_create(name="smollm2", defaults={"num_blocks": 30, "hidden_size": 576})[0]
node_id, client = NodeIdentity.generate(), NodeIdentity.generate()
ClientKey.objects.create(user=payer, key=key_of(client), name="frank")
deposit(payer, 10_000, reference="bank:frank")  # bought credits (no grant here): what he pays for is payable
node = Node.objects.create(owner=erin, token=NodeToken.create_for(erin, "gpu")[0], model=model, start_block=0,
    end_block=10, url="ws://127.0.0.1:1/layerswarm/v1", backend="torch", device="cpu", dtype="float32",
    version="0", public_key=node_id.public_key, state="online", registered_at=timezone.now() - dt.timedelta(days=3))
for tokens in (40, 60):
    r = UsageReceipt.new(session_id="s", model="smollm2", start_block=0, end_block=10, tokens=tokens,
        client_key=key_of(client), node_key=key_of(node_id))
    submit_receipt(SignedReceipt(r, r.sign_as_client(client), r.sign_as_node(node_id)).to_json())
settle_pending()
for passed in (True, True, False, True):
    record_audit(node, passed=passed)
print("seeded")
"""


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-ledger")
    env = {
        "LEDGER_ESCROW_MIN_AGE": "0",
        "LEDGER_ESCROW_RELEASE_SCORE": "0",
        "LEDGER_MIN_PAYOUT": "100",
        "LEDGER_STARTING_GRANT": "0",  # receipts paid from a grant are never payable (#17): frank bought his
    }
    with live_portal(folder, f"layerswarm_ledger_browser_{os.getpid()}", celery=False, env=env) as portal:
        assert manage(["shell", "-c", SEED], portal.env).stdout.strip().endswith("seeded")
        yield portal


def _login(browser, url, username, password):
    page = browser.new_context().new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_load_state("networkidle")
    return page, errors


def test_it_charts_earnings_and_reputation_and_takes_a_payout_to_approval(portal, browser):
    page, errors = _login(browser, portal.url, "erin", "erin-Passphrase-9")
    page.goto(f"{portal.url}/nodes/dashboard/")
    card = page.locator(".node-card").first
    assert card.locator(".served-tokens").inner_text() == "100"
    # uPlot drew both charts (a canvas each), from the points the page embedded.
    card.locator('[data-kind="earnings"] canvas').wait_for()
    card.locator('[data-kind="reputation"] canvas').wait_for()
    assert card.locator('[data-kind="reputation"]').get_attribute("data-points") == "4"
    assert "FAILED" in card.locator("table.audits").inner_text()

    page.goto(f"{portal.url}/credits/")
    page.locator("#credits-chart canvas").wait_for()
    assert page.get_attribute("#credits-chart", "data-points") == "30"  # one bar slot per day
    assert page.inner_text("#payable") == "1000"  # 100 tokens x 10 blocks earned
    page.fill("#payout-form input[name=amount]", "600")
    page.fill("#payout-form input[name=destination]", "IBAN DE00 1234")
    page.click("#payout-form button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "requested" in page.inner_text("#payouts")
    assert page.inner_text("#payable") == "400"
    assert errors == []

    admin, admin_errors = _login(browser, portal.url, "boss", "boss-Passphrase-9")
    admin.goto(f"{portal.url}/staff/payouts/")
    section = admin.locator("section.review").first
    assert "600 credits to erin" in section.inner_text() and "1 failed audits" in section.inner_text()
    section.locator("a.button").click()
    admin.wait_for_selector("#review-form")
    assert admin.inner_text("#earned") == "1000"
    assert "boss" in admin.inner_text("#user-tools").lower()  # the reviewer, never the payout's owner
    assert admin.locator("svg.score-history").count() == 1  # the node's reputation history next to the request
    admin.select_option("#id_decision", "approve")
    admin.fill("#id_external_reference", "SEPA-2026-11-0042")
    admin.click("#review-form input[type=submit]")
    admin.wait_for_load_state("networkidle")
    csv_text = admin.request.get(f"{portal.url}/staff/payouts/approved.csv").text()
    assert "SEPA-2026-11-0042" in csv_text and "erin" in csv_text
    assert admin_errors == []
