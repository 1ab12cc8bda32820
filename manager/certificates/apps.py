from django.apps import AppConfig


class CertificatesConfig(AppConfig):
    name = "manager.certificates"
    label = "certificates"
