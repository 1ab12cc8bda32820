"""The round trip on PostgreSQL, through the real commands as processes."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from .conftest import CONTRACT_EXAMPLE

ROOT = Path(__file__).resolve().parents[2]
SERVER = "postgres://postgres@127.0.0.1:5432"


@pytest.fixture
def fresh_database():
    """Create a PostgreSQL database, yield its URL, drop it afterwards."""
    def make():
        name = f"gatehouse_config_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{SERVER}/{name}"

    created = []
    yield make
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(database_url, data_dir, *args, stdin=None):
    env = {**os.environ, "DATABASE_URL": database_url, "GATEHOUSE_DATA_DIR": str(data_dir), "REDIS_URL": ""}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=stdin,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


@pytest.mark.postgres
def test_export_import_export_is_identical_on_postgresql(tmp_path, fresh_database, full_document_text):
    first_db, second_db = fresh_database(), fresh_database()
    source = tmp_path / "source.yaml"
    source.write_text(full_document_text)

    manage(first_db, tmp_path / "one", "migrate", "--no-input", "-v0")
    manage(first_db, tmp_path / "one", "importconfig", str(source))
    first = manage(first_db, tmp_path / "one", "exportconfig", "--include-secrets")
    manage(second_db, tmp_path / "two", "migrate", "--no-input", "-v0")
    manage(second_db, tmp_path / "two", "importconfig", "-", stdin=first)
    second = manage(second_db, tmp_path / "two", "exportconfig", "--include-secrets")

    assert second == first
    assert yaml.safe_load(first)["proxy_hosts"][0]["headers"]["response"]["set"] == {"X-Frame-Options": "DENY"}


@pytest.mark.postgres
def test_a_failing_import_on_postgresql_exits_non_zero_and_changes_nothing(tmp_path, fresh_database):
    database = fresh_database()
    manage(database, tmp_path, "migrate", "--no-input", "-v0")
    manage(database, tmp_path, "importconfig", "-", stdin=CONTRACT_EXAMPLE)
    before = manage(database, tmp_path, "exportconfig")
    broken = CONTRACT_EXAMPLE.replace("http://10.0.1.10:3000", "http://10.0.1.10:70000").replace("60s", "90s")

    env = {**os.environ, "DATABASE_URL": database, "GATEHOUSE_DATA_DIR": str(tmp_path), "REDIS_URL": ""}
    result = subprocess.run([sys.executable, "manage.py", "importconfig", "-"], cwd=ROOT, env=env, input=broken,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode != 0
    assert "proxy_hosts[0].upstreams[0]: port 70000 out of range (1-65535)" in result.stderr
    assert "proxy_hosts[0].locations[0].upstreams[0]: port 70000 out of range (1-65535)" in result.stderr
    assert manage(database, tmp_path, "exportconfig") == before
