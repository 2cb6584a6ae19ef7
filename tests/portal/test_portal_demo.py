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
