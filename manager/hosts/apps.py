from django.apps import AppConfig


class HostsConfig(AppConfig):
    name = "manager.hosts"
    label = "hosts"

    def ready(self):
        from . import signals

        signals.connect()
