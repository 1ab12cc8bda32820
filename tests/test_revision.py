import threading

import pytest
import redis
from django.db import transaction
from django.test import override_settings

from manager.hosts.models import DeadHost, Settings
from manager.hosts.revision import current_revision

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.mark.django_db
def test_every_saved_change_bumps_the_revision():
    before = current_revision()
    DeadHost.objects.create(domains=["gone.example.test"])
    assert current_revision() == before + 1
    settings_row = Settings.load()
    settings_row.trusted_proxies = ["10.0.0.0/8"]
    settings_row.save()
    assert current_revision() == before + 2
    DeadHost.objects.all().delete()
    assert current_revision() == before + 3


@pytest.mark.django_db
def test_a_rolled_back_change_leaves_the_revision_alone():
    before = current_revision()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            DeadHost.objects.create(domains=["gone.example.test"])
            raise RuntimeError("abort")
    assert current_revision() == before


class Subscriber:
    """A real Redis subscriber on the config channel, collecting messages in a thread."""

    def __init__(self, channel):
        self.client = redis.Redis.from_url(REDIS_URL)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(channel)
        self.pubsub.get_message(timeout=2)  # the subscribe confirmation
        self.messages = []

    def collect(self, seconds):
        stop = threading.Event()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        while not stop.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                self.messages.append(message["data"].decode())
        self.pubsub.close()
        return self.messages


@pytest.mark.django_db(transaction=True)
def test_one_commit_publishes_its_revision_once_on_redis():
    channel = "gatehouse:test-config"
    with override_settings(REDIS_URL=REDIS_URL, CONFIG_CHANNEL=channel):
        subscriber = Subscriber(channel)
        with transaction.atomic():
            DeadHost.objects.create(domains=["a.example.test"])
            DeadHost.objects.create(domains=["b.example.test"])
            assert subscriber.pubsub.get_message(timeout=0.3) is None  # nothing before the commit
        messages = subscriber.collect(1.0)
    assert messages == [str(current_revision())]


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_redis_does_not_fail_the_change(caplog):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        DeadHost.objects.create(domains=["c.example.test"])
    assert DeadHost.objects.filter(domains=["c.example.test"]).exists()
    assert "could not publish config revision" in caplog.text
