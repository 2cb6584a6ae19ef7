"""``manage.py create_api_key USERNAME [--name NAME]``: print a new API key for scripts and tests."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from portal.accounts.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for USERNAME and print it (it is stored hashed and cannot be shown again)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="command line")

    def handle(self, *args, username: str, name: str, **options):
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user {username!r}") from None
        _, plain = ApiKey.create_for(user, name)
        self.stdout.write(plain)
