"""Gatehouse manager: the Django project (dashboard, data model, config as code)."""
from .celery import app as celery_app

__all__ = ("celery_app",)
