"""Shared fixtures of the dashboard view tests: users with rights, and a client logged in as one."""
import pytest
from django.contrib.auth import get_user_model

from manager.accounts.models import Profile

PASSWORD = "a-long-passphrase-42"


def make_user(name, superuser=False, staff=False, **profile):
    """A dashboard user with password PASSWORD and a Profile of these fields (a level per kind:
    hidden | view | manage, and visibility: all | own; the model's defaults otherwise)."""
    account = get_user_model().objects.create_user(name, password=PASSWORD, is_superuser=superuser, is_staff=staff)
    Profile.objects.create(user=account, **profile)
    return account


@pytest.fixture
def as_user(client):
    """Log the test client in as an account: `as_user(account)` returns the client."""
    def login(account):
        assert client.login(username=account.username, password=PASSWORD)
        return client
    return login


@pytest.fixture
def admin(as_user):
    """The test client logged in as an administrator."""
    return as_user(make_user("admin", superuser=True))
