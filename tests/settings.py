"""Test settings: the real settings, with the data directory in a temporary folder."""
import os
import tempfile

os.environ.setdefault("GATEHOUSE_DATA_DIR", tempfile.mkdtemp(prefix="gatehouse-test-"))
os.environ.setdefault("REDIS_URL", "")

from manager.settings import *  # noqa: E402,F401,F403

# Fast hashing in tests; production keeps Django's default (PBKDF2).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", "django.contrib.auth.hashers.PBKDF2PasswordHasher"]
STORAGES = {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not memory: end-to-end tests start the engine as a process on this database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}  # noqa: F405
