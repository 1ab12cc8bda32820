"""WSGI entry point for the dashboard (served by gunicorn)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "manager.settings")
application = get_wsgi_application()
