"""Payouts (earned credits only; approve / reject / hold, audited) and monthly statements."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from portal.ledger import payouts
from portal.ledger.books import balance, balance_of, system_account
from portal.ledger.models import Payout
from portal.ledger.receipts import submit_receipt
from portal.ledger.settlement import settle_pending
from portal.ledger.spending import charge_usage
from portal.ledger.statements import monthly_statement, statement_csv

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(db):
    return User.objects.create_superuser("root", "root@example.com", "root-password-1")


@pytest.fixture
def earned_500(owner, owner_node, client_identity, receipt_factory):
    """The owner earned 500 credits (50 tokens x 10 blocks) on top of the 1000 grant."""
    node, node_identity = owner_node
    submit_receipt(receipt_factory(client_identity, node, node_identity, tokens=50).to_json())
    settle_pending()
    assert balance_of(owner) == 1500


def test_it_pays_out_only_earned_credits_never_the_grant(owner, other, earned_500):
    assert payouts.payable(owner) == 500
    assert payouts.payable(other) == 0  # bob only has (what is left of) his grant
    with pytest.raises(payouts.PayoutRefused) as caught:
        payouts.request_payout(owner, 501, "IBAN")
    assert caught.value.code == "not_payable"
    payouts.request_payout(owner, 300, "IBAN")
    assert payouts.payable(owner) == 200 and balance_of(owner) == 1200
    assert balance(system_account("system:payouts-in-review")) == 300


def test_it_caps_payable_by_the_balance_when_earnings_were_spent(owner, earned_500):
    charge_usage(owner, tokens=130, reference="spend")  # 1300 credits: 200 left
    assert payouts.payable(owner) == 200


def test_it_refuses_requests_without_destination_or_under_the_minimum(owner, earned_500, ledger_settings):
    ledger_settings.LEDGER_MIN_PAYOUT = 100
    with pytest.raises(payouts.PayoutRefused, match="smallest"):
        payouts.request_payout(owner, 99, "IBAN")
    with pytest.raises(payouts.PayoutRefused, match="where"):
        payouts.request_payout(owner, 100, "  ")
    assert Payout.objects.count() == 0


def test_it_returns_the_credits_of_a_rejected_payout_and_records_every_step(owner, admin, earned_500):
    p = payouts.request_payout(owner, 400, "IBAN")
    payouts.hold(p, admin, "checking the audits")
    with pytest.raises(payouts.PayoutRefused, match="say why"):
        payouts.reject(p, admin, "")
    payouts.reject(p, admin, "failed audits on node #1")
    p.refresh_from_db()
    assert p.status == "rejected" and p.reason == "failed audits on node #1" and p.reviewed_by == admin
    assert balance_of(owner) == 1500 and payouts.payable(owner) == 500
    assert [(e.action, e.actor) for e in p.events.all()] == [("requested", owner), ("held", admin), ("rejected", admin)]
    with pytest.raises(payouts.PayoutRefused) as caught:
        payouts.approve(p, admin, "too late")
    assert caught.value.code == "closed"


def test_it_approves_with_a_reference_and_exports_csv_safely(owner, admin, earned_500):
    p = payouts.request_payout(owner, 500, '=HYPERLINK("http://evil")')
    with pytest.raises(payouts.PayoutRefused, match="reference"):
        payouts.approve(p, admin, " ")
    payouts.approve(p, admin, "SEPA-1")
    assert balance(system_account("system:paid-out")) == 500 and balance_of(owner) == 1000
    with pytest.raises(payouts.PayoutRefused):
        payouts.reject(p, admin, "changed my mind")  # decided payouts never move again
    rows = list(csv.DictReader(io.StringIO(payouts.approved_csv())))
    assert len(rows) == 1 and rows[0]["external_reference"] == "SEPA-1" and rows[0]["credits"] == "500"
    assert rows[0]["destination"].startswith("'=")  # a spreadsheet shows it as text, never runs it


def test_it_writes_a_monthly_statement_with_opening_running_and_closing_balances(owner, earned_500):
    charge_usage(owner, tokens=7, reference="chat:1")
    now = timezone.now()
    st = monthly_statement(owner, now.year, now.month)
    assert st.opening == 0 and st.closing == 1500 - 70 == balance_of(owner)
    assert [line["kind"] for line in st.lines] == ["grant", "receipt", "usage"]
    assert [line["balance"] for line in st.lines] == [1000, 1500, 1430]
    assert st.totals == {"grant": 1000, "receipt": 500, "usage": -70}
    last_month = (now.year - 1, 12) if now.month == 1 else (now.year, now.month - 1)
    before = monthly_statement(owner, *last_month)
    assert before.lines == [] and before.opening == before.closing == 0
    text = statement_csv(st)
    assert text.splitlines()[1].endswith(",0") and text.splitlines()[-1].endswith(",1430")
