"""manage.py exportconfig [FILE] [--include-secrets]: the whole configuration as YAML."""
import os

from django.core.management.base import BaseCommand

from manager.configuration.exporter import export_yaml


class Command(BaseCommand):
    help = "Write the whole configuration as YAML (docs/config-format.md), to FILE or stdout."

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", help="where to write; stdout when left out or '-'")
        parser.add_argument("--include-secrets", action="store_true",
                            help="also write certificate private keys and Let's Encrypt certificates")

    def handle(self, *args, file=None, include_secrets=False, **options):
        document = export_yaml(include_secrets=include_secrets)
        if file in (None, "-"):
            self.stdout.write(document, ending="")
            return
        # Password hashes (and keys with --include-secrets) are in there: owner-only.
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8") as out:
            out.write(document)
        self.stderr.write(f"configuration written to {file}")
