from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "manager.access"
    label = "access"
