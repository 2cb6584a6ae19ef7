"""What users and node owners read about their credits: balances, series for charts, monthly statements.

All of it is derived from ledger entries (never from a stored balance).
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import io
from dataclasses import dataclass, field

from django.db.models import Q, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from portal.ledger.books import balance, escrow_account, held_account, user_account
from portal.ledger.models import Account, Entry, Receipt, Transaction
from portal.ledger.payouts import earned, payable

EARNING_KINDS = (Transaction.Kind.RECEIPT, Transaction.Kind.ESCROW_RELEASE)


def summary(user) -> dict:
    """Balance, what is payable, earned in total, in escrow, held (not payable), spent on usage."""
    account = user_account(user)
    escrow = Account.objects.filter(kind=Account.Kind.ESCROW, user=user)
    held = Entry.objects.filter(account__in=escrow).aggregate(s=Sum("amount"))["s"] or 0
    spent = Entry.objects.filter(account=account, transaction__kind=Transaction.Kind.USAGE).aggregate(s=Sum("amount"))
    return {
        "balance": balance(account),
        "payable": payable(user),
        "earned": earned(user),
        "escrow": held,
        "held": balance(held_account(user)),
        "spent_on_usage": -(spent["s"] or 0),
    }


def daily_series(user, days: int = 30, now: dt.datetime | None = None) -> dict:
    """Per day of the last ``days``: credits earned (settled receipts, into the account or escrow) and spent.

    Returns ``{"days": [unix seconds of each day's start], "earned": [...], "spent": [...]}`` (uPlot's layout).
    """
    now = now or timezone.now()
    start = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    accounts = Account.objects.filter(user=user)
    rows = (
        Entry.objects.filter(account__in=accounts, created_at__gte=start)
        .annotate(day=TruncDay("created_at"))
        .values("day")
        .annotate(
            earned=Sum("amount", filter=Q(amount__gt=0, transaction__kind=Transaction.Kind.RECEIPT)),
            spent=Sum(
                "amount",
                filter=Q(amount__lt=0, transaction__kind__in=[Transaction.Kind.USAGE, Transaction.Kind.RECEIPT]),
            ),
        )
    )
    by_day = {r["day"].date(): r for r in rows}
    out = {"days": [], "earned": [], "spent": []}
    for i in range(days):
        day = (start + dt.timedelta(days=i)).date()
        row = by_day.get(day, {})
        out["days"].append(int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()))
        out["earned"].append(row.get("earned") or 0)
        out["spent"].append(-(row.get("spent") or 0))
    return out


def node_earnings(node, days: int = 30, now: dt.datetime | None = None) -> dict:
    """Per day: block-tokens a node served (settled receipts) -- its owner's earnings from it."""
    now = now or timezone.now()
    start = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = (
        Receipt.objects.filter(node=node, status=Receipt.Status.SETTLED, settled_at__gte=start)
        .annotate(day=TruncDay("settled_at"))
        .values("day")
        .annotate(s=Sum("block_tokens"))
    )
    by_day = {r["day"].date(): r["s"] for r in rows}
    days_out, values = [], []
    for i in range(days):
        day = (start + dt.timedelta(days=i)).date()
        days_out.append(int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()))
        values.append(by_day.get(day, 0))
    return {"days": days_out, "earned": values}


def node_totals(node) -> dict:
    """A node's served tokens and block-tokens (settled receipts), receipts pending, escrow held."""
    settled = Receipt.objects.filter(node=node, status=Receipt.Status.SETTLED).aggregate(
        tokens=Sum("tokens"), block_tokens=Sum("block_tokens")
    )
    return {
        "tokens": settled["tokens"] or 0,
        "block_tokens": settled["block_tokens"] or 0,
        "pending": Receipt.objects.filter(node=node, status=Receipt.Status.PENDING).count(),
        "escrow": balance(escrow_account(node)),
    }


@dataclass
class Statement:
    """One user's account for one calendar month (UTC)."""

    year: int
    month: int
    opening: int
    closing: int
    lines: list[dict] = field(default_factory=list)  # {"at", "kind", "memo", "reference", "amount", "balance"}
    totals: dict[str, int] = field(default_factory=dict)  # by transaction kind

    @property
    def title(self) -> str:
        """``November 2026``."""
        return f"{calendar.month_name[self.month]} {self.year}"


def monthly_statement(user, year: int, month: int) -> Statement:
    """Opening balance, every entry of the month with the running balance, closing balance, totals by kind."""
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.UTC)
    account = user_account(user)
    opening = Entry.objects.filter(account=account, created_at__lt=start).aggregate(s=Sum("amount"))["s"] or 0
    entries = (
        Entry.objects.filter(account=account, created_at__gte=start, created_at__lt=end)
        .select_related("transaction")
        .order_by("created_at", "id")
    )
    statement = Statement(year, month, opening, opening)
    running = opening
    for e in entries:
        running += e.amount
        kind = e.transaction.kind
        statement.lines.append(
            {
                "at": e.created_at,
                "kind": kind,
                "memo": e.transaction.memo,
                "reference": e.transaction.reference,
                "amount": e.amount,
                "balance": running,
            }
        )
        statement.totals[kind] = statement.totals.get(kind, 0) + e.amount
    statement.closing = running
    return statement


def statement_csv(statement: Statement) -> str:
    """The statement as CSV: date, kind, memo, reference, amount, balance (opening and closing rows included)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["date", "kind", "memo", "reference", "credits", "balance"])
    writer.writerow([f"{statement.year}-{statement.month:02d}-01", "opening", "", "", "", statement.opening])
    for line in statement.lines:
        writer.writerow(
            [line["at"].isoformat(), line["kind"], line["memo"], line["reference"], line["amount"], line["balance"]]
        )
    writer.writerow(["", "closing", "", "", "", statement.closing])
    return out.getvalue()


def statement_months(user) -> list[tuple[int, int]]:
    """``(year, month)`` of every month with entries on the user's account, newest first."""
    account = user_account(user)
    first = Entry.objects.filter(account=account).order_by("created_at").values_list("created_at", flat=True).first()
    if first is None:
        return []
    now = timezone.now()
    months, y, m = [], now.year, now.month
    while (y, m) >= (first.year, first.month):
        months.append((y, m))
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    return months
