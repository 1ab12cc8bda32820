import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404

from manager.accounts import access
from manager.accounts.models import Profile
from manager.certificates.models import Certificate

pytestmark = pytest.mark.django_db


def make(name, **profile):
    account = get_user_model().objects.create_user(name, password="a-long-passphrase-42")
    if profile:
        Profile.objects.create(user=account, **profile)
    return account


def test_a_new_user_sees_nothing_until_given_rights():
    fresh = make("fresh")
    assert all(access.level(fresh, kind) == "hidden" for kind in ("proxy_hosts", "certificates", "streams"))
    with pytest.raises(PermissionDenied):
        access.require(fresh, "proxy_hosts", "view")


def test_administrators_manage_everything_and_inactive_or_anonymous_users_nothing():
    admin = get_user_model().objects.create_superuser("root", "r@example.test", "a-long-passphrase-42")
    assert access.level(admin, "access_lists") == "manage" and access.Rights(admin).admin
    gone = make("gone", certificates="manage")
    gone.is_active = False
    assert access.level(gone, "certificates") == "hidden"
    assert access.level(AnonymousUser(), "certificates") == "hidden"


def test_levels_are_ordered_view_below_manage():
    viewer = make("viewer", certificates="view")
    access.require(viewer, "certificates", "view")
    with pytest.raises(PermissionDenied):
        access.require(viewer, "certificates", "manage")
    assert access.Rights(viewer).certificates == {"view": True, "manage": False}
    assert access.Rights(viewer).proxy_hosts == {"view": False, "manage": False}


def test_visibility_own_limits_lookups_to_the_users_items():
    owner = make("owner", certificates="manage", visibility="own")
    other = Certificate.objects.create(name="other", domains=["a.test.example"])
    mine = Certificate.objects.create(name="mine", domains=["b.test.example"], owner=owner)
    assert list(access.visible(owner, "certificates", Certificate.objects.all())) == [mine]
    assert access.get_visible(owner, "certificates", Certificate.objects, mine.pk, "manage") == mine
    with pytest.raises(Http404):
        access.get_visible(owner, "certificates", Certificate.objects, other.pk)


def test_an_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        access.level(make("x"), "spaceships")
