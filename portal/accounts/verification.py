"""E-mail verification of self-registered accounts (#17 finding 7: a free account per e-mail address, not per click).

Sign-up records an :class:`~portal.accounts.models.EmailVerification` and mails a signed link; until the link is
opened the account may chat (its starting grant) but may not create node tokens or API keys, and its reports
about nodes weigh nothing. Accounts made by an admin or ``manage.py`` have no such record: they are trusted.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.urls import reverse
from django.utils import timezone

from portal.accounts.models import EmailVerification

_SALT = "layerswarm.accounts.verify-email"


class BadLink(Exception):
    """A verification link that is forged, expired or for another address."""


def is_verified(user) -> bool:
    """True unless the user signed up themselves and has not yet opened the link we mailed."""
    if not user.is_authenticated:
        return False
    return not EmailVerification.objects.filter(user_id=user.pk, verified_at__isnull=True).exists()


def link_token(user) -> str:
    """A signed, expiring token naming the user and the address it was sent to."""
    return signing.dumps({"user": user.pk, "email": user.email}, salt=_SALT, compress=True)


def send_verification(user, request) -> None:
    """Record that ``user`` must verify and mail them the link (Django's e-mail backend: console or SMTP)."""
    EmailVerification.objects.update_or_create(user=user, defaults={"verified_at": None, "sent_at": timezone.now()})
    url = request.build_absolute_uri(reverse("accounts:verify_email", args=[link_token(user)]))
    send_mail(
        "Confirm your Layerswarm e-mail address",
        f"Open this link to confirm {user.email} for the Layerswarm account {user.username}:\n\n{url}\n\n"
        f"It works for {settings.ACCOUNTS_VERIFY_MAX_AGE // 3600} hours. If you did not sign up, ignore this mail.",
        None,
        [user.email],
    )


def verify(token: str):
    """Mark the account a link names as verified; returns the user.

    Raises:
        BadLink: the link is forged or expired, or the account's address changed since it was sent.
    """
    from django.contrib.auth import get_user_model

    try:
        data = signing.loads(token, salt=_SALT, max_age=settings.ACCOUNTS_VERIFY_MAX_AGE)
    except signing.BadSignature:
        raise BadLink("this link is invalid or has expired; sign in and ask for a new one") from None
    user = get_user_model().objects.filter(pk=data.get("user")).first()
    if user is None or user.email != data.get("email"):
        raise BadLink("this link does not match the account's e-mail address")
    EmailVerification.objects.filter(user=user).update(verified_at=timezone.now())
    return user
