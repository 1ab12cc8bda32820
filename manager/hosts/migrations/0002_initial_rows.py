from django.db import migrations


def create_rows(apps, schema_editor):
    apps.get_model("hosts", "Settings").objects.get_or_create(pk=1)
    apps.get_model("hosts", "ConfigRevision").objects.get_or_create(pk=1, defaults={"revision": 1})


class Migration(migrations.Migration):
    dependencies = [("hosts", "0001_initial")]
    operations = [migrations.RunPython(create_rows, migrations.RunPython.noop)]
