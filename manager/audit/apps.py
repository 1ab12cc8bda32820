from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "manager.audit"
    label = "audit"
