"""`manage.py requestcert NAME [-d DOMAIN ...] [--queue]`: request a certificate from the
configured ACME directory, in the foreground with progress, or through Celery."""
from django.core.management.base import BaseCommand, CommandError

from manager.certificates import acme
from manager.certificates.models import Certificate
from manager.lib.validators import Invalid, hostname


class Command(BaseCommand):
    help = "Request (or renew) a Let's Encrypt/ACME certificate now."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the certificate's name (created when --domain is given)")
        parser.add_argument("-d", "--domain", action="append", default=[],
                            help="a name to cover (repeatable); replaces the certificate's domains")
        parser.add_argument("--queue", action="store_true", help="hand the request to the Celery worker")

    def handle(self, *args, **options):
        certificate = self._certificate(options["name"], options["domain"])
        try:
            acme.check_domains(certificate.domains)
        except acme.AcmeError as exc:
            raise CommandError(str(exc)) from None
        if options["queue"]:
            from manager.certificates.tasks import issue_certificate

            acme.set_progress(certificate.pk, "queued")
            result = issue_certificate.delay(certificate.pk)
            self.stdout.write(f"{certificate.name}: queued (task {result.id})")
            return
        certificate = acme.issue(certificate.pk, report=lambda text: self.stdout.write(f"{certificate.name}: {text}"))
        if certificate.progress != "issued":
            raise CommandError(f"{certificate.name}: {certificate.last_error}")

    def _certificate(self, name, domains):
        try:
            domains = [hostname(d) for d in domains]
        except Invalid as exc:
            raise CommandError(str(exc)) from None
        certificate = Certificate.objects.filter(name=name).first()
        if certificate is None:
            if not domains:
                raise CommandError(f"no certificate named {name!r}: give its names with --domain")
            return Certificate.objects.create(name=name, provider="letsencrypt", domains=domains)
        if certificate.provider != "letsencrypt":
            raise CommandError(f"{name} is an uploaded certificate, not one Gatehouse requests")
        if domains and domains != certificate.domains:
            certificate.domains = domains
            certificate.save(update_fields=["domains", "updated_at"])
        return certificate
