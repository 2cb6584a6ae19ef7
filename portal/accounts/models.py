"""API keys and node tokens: bearer secrets owned by a user, stored hashed, revocable."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.db import connection, models
from django.utils import timezone

from portal.accounts import bearer, tokencache


@cache
def _usable_sql(model) -> tuple[str, list[str], list[str]]:
    """The statement of :meth:`BearerSecret._usable_by_digest` for ``model`` (the conditions of
    :meth:`SecretQuerySet.usable`), and the secret's and the user's field names in its column order."""
    user_field = model._meta.get_field("user")
    user_model = user_field.related_model
    quote = connection.ops.quote_name
    columns = [f"s.{quote(f.column)}" for f in model._meta.concrete_fields]
    columns += [f"u.{quote(f.column)}" for f in user_model._meta.concrete_fields]
    sql = (
        f"SELECT {', '.join(columns)} FROM {quote(model._meta.db_table)} s"
        f" JOIN {quote(user_model._meta.db_table)} u"
        f" ON u.{quote(user_model._meta.pk.column)} = s.{quote(user_field.column)}"
        " WHERE s.digest = %s AND s.revoked_at IS NULL AND u.is_active"
        " AND (s.expires_at IS NULL OR s.expires_at > %s) LIMIT 1"
    )
    mine = [f.attname for f in model._meta.concrete_fields]
    return sql, mine, [f.attname for f in user_model._meta.concrete_fields]


class Unverified(Exception):
    """An account that must confirm its e-mail address before it may create keys or tokens (#17)."""


class SecretQuerySet(models.QuerySet):
    """Lookups shared by API keys and node tokens."""

    def usable(self):
        """Not revoked, not expired, owned by an active (not banned) user."""
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class BearerSecret(models.Model):
    """Common fields of a secret that authenticates as its user."""

    KIND = ""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = SecretQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.KIND}_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        """Usable right now."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    @classmethod
    def create_for(cls, user, name: str, expires_at=None) -> tuple[BearerSecret, str]:
        """Create a secret for ``user``; return it and the plain text (shown once).

        Raises:
            Unverified: the user signed up and has not confirmed their e-mail address yet.
        """
        if settings.ACCOUNTS_VERIFY_EMAIL and EmailVerification.objects.filter(user_id=user.pk, verified_at=None):
            raise Unverified("confirm your e-mail address first (we sent you a link)")
        new = bearer.generate(cls.KIND)
        obj = cls.objects.create(user=user, name=name, prefix=new.prefix, digest=new.digest, expires_at=expires_at)
        return obj, new.plain

    @classmethod
    def authenticate(cls, plain: str):
        """The usable secret matching ``plain``, or ``None`` (unknown, forged, revoked, expired, banned user)."""
        if not plain.startswith(cls.KIND + "_") or len(plain) > 200:
            return None
        now = timezone.now()
        if connection.vendor == "postgresql":
            obj = cls._usable_by_digest(bearer.digest(plain), now)
        else:
            obj = cls.objects.usable().select_related("user").filter(digest=bearer.digest(plain)).first()
        if obj is not None:
            if cls.KIND == "lsn":  # the heartbeat fast path (portal.swarm.fastbeat) finds it there next time
                tokencache.remember(obj.digest, obj.pk, obj.user_id, obj.expires_at, now)
            # At most one write a minute: heartbeats authenticate every few seconds.
            if obj.last_used_at is None or (now - obj.last_used_at).total_seconds() > 60:
                cls.objects.filter(pk=obj.pk).update(last_used_at=now)
        return obj

    @classmethod
    def _usable_by_digest(cls, digest: str, now):
        """``usable().select_related("user").filter(digest=digest).first()`` as one plain SQL statement.

        Every heartbeat authenticates: building this query with the ORM cost more CPU than running it
        (``make bench-portal``). PostgreSQL returns values the model fields take as they are (SQLite's
        datetimes need the ORM's converters, so SQLite keeps the ORM query).
        """
        sql, mine, theirs = _usable_sql(cls)
        with connection.cursor() as cursor:
            cursor.execute(sql, [digest, now])
            row = cursor.fetchone()
        if row is None:
            return None
        obj = cls.from_db(connection.alias, mine, row[: len(mine)])
        obj.user = cls._meta.get_field("user").related_model.from_db(connection.alias, theirs, row[len(mine) :])
        return obj

    def revoke(self) -> None:
        """Stop the secret from authenticating (idempotent)."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class ApiKey(BearerSecret):
    """A key for programs calling the API as the user (``Authorization: Bearer lsk_...``)."""

    KIND = "lsk"
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")


class NodeToken(BearerSecret):
    """A token for one contributed machine; its nodes register and heartbeat with it (``lsn_...``)."""

    KIND = "lsn"
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="node_tokens")


class EmailVerification(models.Model):
    """A self-registered account's e-mail check (``portal.accounts.verification``): done once ``verified_at`` is set.

    Accounts without a row (made by an admin or ``manage.py``) count as verified.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_verification")
    sent_at = models.DateTimeField(default=timezone.now)
    verified_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user_id}: {'verified' if self.verified_at else 'pending'}"
