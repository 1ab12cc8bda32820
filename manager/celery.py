"""The Celery app: long work (certificates, renewals, probes) runs here."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "manager.settings")

app = Celery("gatehouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
