"""Test settings: the real settings, with the data directory in a temporary folder."""
import os
import tempfile

os.environ.setdefault("GATEHOUSE_DATA_DIR", tempfile.mkdtemp(prefix="gatehouse-test-"))
os.environ.setdefault("REDIS_URL", "")

from manager.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
STORAGES = {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
