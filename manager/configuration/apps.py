from django.apps import AppConfig


class ConfigurationConfig(AppConfig):
    name = "manager.configuration"
    label = "configuration"
