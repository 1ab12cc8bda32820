"""manage.py importconfig FILE [--replace] [--check]: load a YAML configuration, all or nothing."""
import sys

from django.core.management.base import BaseCommand, CommandError

from manager.configuration.importer import import_yaml
from manager.configuration.schema import DocumentInvalid


class Command(BaseCommand):
    help = ("Load a YAML configuration (docs/config-format.md) in one transaction. Merges by default; "
            "--replace deletes everything the document does not name.")

    def add_arguments(self, parser):
        parser.add_argument("file", help="the YAML document; '-' reads stdin")
        parser.add_argument("--replace", action="store_true", help="delete everything the document does not name")
        parser.add_argument("--check", action="store_true", help="validate and show what would change, change nothing")

    def handle(self, *args, file, replace=False, check=False, **options):
        try:
            text = sys.stdin.read() if file == "-" else _read(file)
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CommandError(f"cannot read {file}: not UTF-8 text") from None
        try:
            summary = import_yaml(text, replace=replace, dry_run=check)
        except DocumentInvalid as exc:
            count = len(exc.errors)
            lines = "\n".join(f"  {error}" for error in exc.errors)
            source = "stdin" if file == "-" else file
            raise CommandError(f"{source}: {count} error{'s' if count != 1 else ''}, nothing was changed:\n{lines}") from None
        heading = "check passed, would change" if check else ("replaced" if replace else "merged")
        self.stdout.write(f"{heading}:")
        for line in summary.lines():
            self.stdout.write(f"  {line}")


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()
