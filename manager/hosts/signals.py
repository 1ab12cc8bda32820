"""Every saved or deleted configuration row bumps the revision."""
from django.db.models.signals import post_delete, post_save

from manager.access.models import AccessList, AccessListUser, AccessRule
from manager.certificates.models import AcmeChallenge, Certificate

from .models import DeadHost, Location, ProxyHost, RedirectionHost, Settings, Stream
from .revision import config_changed

CONFIG_MODELS = (ProxyHost, Location, RedirectionHost, DeadHost, Stream, Settings,
                 AccessList, AccessListUser, AccessRule, Certificate, AcmeChallenge)


def _changed(sender, **kwargs):
    if kwargs.get("raw"):
        return
    config_changed()


def connect():
    for model in CONFIG_MODELS:
        post_save.connect(_changed, sender=model, dispatch_uid=f"config-save-{model.__name__}")
        post_delete.connect(_changed, sender=model, dispatch_uid=f"config-delete-{model.__name__}")
