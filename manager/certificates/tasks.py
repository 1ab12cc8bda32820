"""Celery tasks: thin wrappers over `manager.certificates.acme` (callable directly in tests)."""
from celery import shared_task

from . import acme


@shared_task
def issue_certificate(cert_id):
    """Request certificate `cert_id` from its ACME directory; returns its progress."""
    return acme.issue(cert_id).progress


@shared_task
def renew_due_certificates():
    """Daily (beat): renew ACME certificates expiring within 30 days."""
    return acme.renew_due()
