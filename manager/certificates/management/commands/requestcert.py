"""`manage.py requestcert NAME [-d DOMAIN ...] [--dns-provider NAME | --http] [--queue]`: request a
certificate from the configured ACME directory, in the foreground with progress, or through
Celery. `--dns-provider` switches the certificate to DNS-01 through that provider (needed for
wildcard names), `--http` back to HTTP-01; without either the certificate keeps its challenge."""
from django.core.management.base import BaseCommand, CommandError

from manager.certificates import acme
from manager.certificates.models import Certificate, DnsProvider
from manager.lib.validators import Invalid, hostname


class Command(BaseCommand):
    help = "Request (or renew) a Let's Encrypt/ACME certificate now."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the certificate's name (created when --domain is given)")
        parser.add_argument("-d", "--domain", action="append", default=[],
                            help="a name to cover (repeatable); replaces the certificate's domains")
        challenge = parser.add_mutually_exclusive_group()
        challenge.add_argument("--dns-provider", metavar="PROVIDER",
                               help="validate with DNS-01 through this DNS provider (wildcards need it)")
        challenge.add_argument("--http", action="store_true", help="validate with HTTP-01 through the engine")
        parser.add_argument("--queue", action="store_true", help="hand the request to the Celery worker")

    def handle(self, *args, **options):
        provider = None
        if options["dns_provider"]:
            provider = DnsProvider.objects.filter(name=options["dns_provider"]).first()
            if provider is None:
                known = ", ".join(DnsProvider.objects.values_list("name", flat=True)) or "none yet"
                raise CommandError(f"no DNS provider named {options['dns_provider']!r} (known: {known})")
        certificate = self._certificate(options["name"], options["domain"], provider)
        if options["http"] and certificate.challenge != "http":
            certificate.challenge, certificate.dns_provider = "http", None
            certificate.save(update_fields=["challenge", "dns_provider", "updated_at"])
        try:
            acme.check_certificate(certificate)
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

    def _certificate(self, name, domains, provider):
        try:
            domains = [hostname(d) for d in domains]
        except Invalid as exc:
            raise CommandError(str(exc)) from None
        certificate = Certificate.objects.filter(name=name).first()
        if certificate is None:
            if not domains:
                raise CommandError(f"no certificate named {name!r}: give its names with --domain")
            return Certificate.objects.create(name=name, provider="letsencrypt", domains=domains,
                                              challenge="dns" if provider else "http", dns_provider=provider)
        if certificate.provider != "letsencrypt":
            raise CommandError(f"{name} is an uploaded certificate, not one Gatehouse requests")
        changed = []
        if domains and domains != certificate.domains:
            certificate.domains = domains
            changed.append("domains")
        if provider is not None and (certificate.challenge, certificate.dns_provider_id) != ("dns", provider.pk):
            certificate.challenge, certificate.dns_provider = "dns", provider
            changed += ["challenge", "dns_provider"]
        if changed:
            certificate.save(update_fields=changed + ["updated_at"])
        return certificate
