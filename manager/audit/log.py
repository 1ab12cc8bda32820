"""record(): every dashboard change writes one audit entry, in the change's transaction.

    record(request.user, "updated", host, before=snapshot_before, after=snapshot(host))

`before`/`after` are plain dicts (JSON); secrets must be left out by the caller
(`snapshot()` drops fields named like secrets).
"""
from django.forms.models import model_to_dict

from .models import AuditEntry

SECRET_WORDS = ("password", "key_pem", "secret", "token")


def snapshot(obj, exclude=()):
    """A JSON-able dict of a model instance's fields, secrets and `exclude` left out."""
    data = model_to_dict(obj)
    return {name: _plain(value) for name, value in data.items()
            if name not in exclude and not any(word in name for word in SECRET_WORDS)}


def _plain(value):
    if isinstance(value, (str, int, float, bool, type(None), list, dict)):
        return value
    if hasattr(value, "pk"):
        return value.pk
    return str(value)


def record(user, action, obj=None, kind=None, before=None, after=None, object_repr=None):
    authenticated = user is not None and getattr(user, "is_authenticated", False)
    return AuditEntry.objects.create(
        user=user if authenticated else None,
        username=user.get_username() if authenticated else "",
        action=action,
        kind=kind or (obj._meta.model_name if obj is not None else ""),
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=(object_repr or (str(obj) if obj is not None else ""))[:255],
        before=before, after=after,
    )
