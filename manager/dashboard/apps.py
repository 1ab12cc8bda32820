from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "manager.dashboard"
    label = "dashboard"
