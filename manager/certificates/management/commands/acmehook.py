"""`manage.py acmehook auth|cleanup`: certbot's --manual-auth-hook / --manual-cleanup-hook.

certbot passes CERTBOT_DOMAIN, CERTBOT_TOKEN and CERTBOT_VALIDATION in the environment;
`manager.certificates.acme` adds GATEHOUSE_CERTIFICATE_ID. What this prints on stderr ends
up in certbot's output.
"""
import os
import sys

from django.core.management.base import BaseCommand, CommandError

from manager.certificates.challenge import ChallengeError, publish, wait_until_served, withdraw


class Command(BaseCommand):
    help = "certbot manual hook: publish (auth) or remove (cleanup) an HTTP-01 token."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["auth", "cleanup"])
        parser.add_argument("--wait", type=float, default=10.0,
                            help="seconds to wait for the local engine to serve the token (auth)")

    def handle(self, *args, **options):
        try:
            domain = os.environ["CERTBOT_DOMAIN"]
            token = os.environ["CERTBOT_TOKEN"]
        except KeyError as exc:
            raise CommandError(f"{exc.args[0]} is not set: this command is run by certbot") from None
        if options["action"] == "cleanup":
            withdraw(token)
            return
        validation = os.environ.get("CERTBOT_VALIDATION", "")
        certificate_id = os.environ.get("GATEHOUSE_CERTIFICATE_ID") or None
        try:
            publish(domain, token, validation, certificate_id)
        except ChallengeError as exc:
            raise CommandError(str(exc)) from None
        if not wait_until_served(domain, token, validation, timeout=options["wait"]):
            # Not fatal: the engine may run on other nodes only; the ACME server has the last word.
            print(f"warning: the engine on 127.0.0.1 did not serve the challenge for {domain} "
                  f"within {options['wait']:g} s", file=sys.stderr)
