from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "manager.dashboard"
    label = "dashboard"

    def ready(self):
        from . import signals

        signals.connect()
