from django.db import migrations, models

# Newest-seen first with never-seen devices last: an index in that order (PostgreSQL only, like the
# GIN indexes of 0002; SQLite cannot make it and the embedded fleets are small).
LAST_SEEN = (
    "CREATE INDEX IF NOT EXISTS device_last_seen_id ON fleet_device (last_seen_at DESC NULLS LAST, id DESC)"
)


def last_seen_up(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(LAST_SEEN)


def last_seen_down(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS device_last_seen_id")


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0002_device_indexes"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="device",
            index=models.Index(fields=["name", "id"], name="device_name_id"),
        ),
        migrations.RunPython(last_seen_up, last_seen_down),
        migrations.AddIndex(
            model_name="deviceevent",
            index=models.Index(
                condition=models.Q(("kind", "installed")),
                fields=["model_name", "version_label", "received_at"],
                name="event_installed_received",
            ),
        ),
    ]
