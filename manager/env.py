"""Typed readers for settings taken from the environment; bad values fail loudly."""
import os
from pathlib import Path


class ConfigError(Exception):
    """An environment variable holds a value Gatehouse cannot use."""


def env_str(name, default=""):
    file_name = os.environ.get(name + "_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def env_int(name, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def env_port(name, default):
    value = env_int(name, default)
    if not 1 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number 1-65535, got {value}")
    return value


def env_bool(name, default=False):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def data_dir():
    return Path(os.environ.get("GATEHOUSE_DATA_DIR") or "./data").resolve()


def load_or_create_secret_key(directory):
    """The secret key from GATEHOUSE_SECRET_KEY(_FILE), else one generated once into the data dir."""
    key = env_str("GATEHOUSE_SECRET_KEY")
    if key:
        return key
    path = Path(directory) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
