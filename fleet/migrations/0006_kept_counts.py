"""Kept device counts (fleet/kept.py): profiles, counts per device key, and the trigger that keeps them.

On PostgreSQL the trigger writes a +1/-1 delta whenever a device is enrolled, deleted, relabelled,
reports another installed version or hardware, or is revoked; ``fleet.kept.fold`` adds the deltas
into the counts. Existing devices are counted once here (one pass over the table).
"""

from django.db import migrations, models

WRAP = 2**64 % 10000  # the key takes the digest's first 8 bytes unsigned; PostgreSQL reads them signed

UP = [
    f"""
CREATE OR REPLACE FUNCTION fleet_device_key(id uuid) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT (CASE WHEN x >= 0 THEN x % 10000 ELSE ((x % 10000) + 10000 + {WRAP}) % 10000 END)::integer
  FROM (SELECT ('x' || substr(encode(sha256(convert_to(id::text, 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint AS x) d
$$""",
    """
CREATE OR REPLACE FUNCTION fleet_profile_hw(hardware jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT jsonb_strip_nulls(jsonb_build_object(
    'arch', hardware -> 'arch', 'ram_mb', hardware -> 'ram_mb', 'ort_version', hardware -> 'ort_version',
    'providers', hardware -> 'providers', 'storage_free_mb', hardware -> 'storage_free_mb'))
$$""",
    """
CREATE OR REPLACE FUNCTION fleet_profile_key(labels jsonb, hardware jsonb, installed jsonb, revoked boolean)
RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT md5(coalesce(labels, '{}'::jsonb)::text || '|' || fleet_profile_hw(hardware)::text || '|'
             || coalesce(installed, '{}'::jsonb)::text || '|' || revoked::text)::uuid
$$""",
    """
CREATE OR REPLACE FUNCTION fleet_device_profile(labels jsonb, hardware jsonb, installed jsonb, revoked boolean)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE k uuid := fleet_profile_key(labels, hardware, installed, revoked);
BEGIN
  PERFORM 1 FROM fleet_deviceprofile WHERE key = k;
  IF NOT FOUND THEN
    INSERT INTO fleet_deviceprofile (key, labels, hardware, installed, revoked)
    VALUES (k, coalesce(labels, '{}'::jsonb), fleet_profile_hw(hardware), coalesce(installed, '{}'::jsonb), revoked)
    ON CONFLICT (key) DO NOTHING;
  END IF;
  RETURN k;
END $$""",
    """
CREATE OR REPLACE FUNCTION fleet_device_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE old_k uuid; new_k uuid;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    old_k := fleet_profile_key(OLD.labels, OLD.hardware, OLD.installed, OLD.token_revoked_at IS NOT NULL);
    new_k := fleet_profile_key(NEW.labels, NEW.hardware, NEW.installed, NEW.token_revoked_at IS NOT NULL);
    IF old_k = new_k THEN
      RETURN NULL;  -- nothing placement or the pages read changed
    END IF;
    PERFORM fleet_device_profile(NEW.labels, NEW.hardware, NEW.installed, NEW.token_revoked_at IS NOT NULL);
    INSERT INTO fleet_profilecountdelta (profile_key, slot, n)
    SELECT k, s, n FROM (SELECT fleet_device_key(NEW.id) AS s) AS key,  -- the id never changes: hash it once
      LATERAL (VALUES (old_k, -1), (new_k, 1)) AS d(k, n);
  ELSIF TG_OP = 'INSERT' THEN
    new_k := fleet_device_profile(NEW.labels, NEW.hardware, NEW.installed, NEW.token_revoked_at IS NOT NULL);
    INSERT INTO fleet_profilecountdelta (profile_key, slot, n) VALUES (new_k, fleet_device_key(NEW.id), 1);
  ELSE
    old_k := fleet_profile_key(OLD.labels, OLD.hardware, OLD.installed, OLD.token_revoked_at IS NOT NULL);
    INSERT INTO fleet_profilecountdelta (profile_key, slot, n) VALUES (old_k, fleet_device_key(OLD.id), -1);
  END IF;
  RETURN NULL;
END $$""",
    """
CREATE OR REPLACE FUNCTION fleet_device_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM fleet_profilecount;
  DELETE FROM fleet_profilecountdelta;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER fleet_device_counts_ins AFTER INSERT ON fleet_device FOR EACH ROW "
    "EXECUTE FUNCTION fleet_device_counts()",
    "CREATE TRIGGER fleet_device_counts_del AFTER DELETE ON fleet_device FOR EACH ROW "
    "EXECUTE FUNCTION fleet_device_counts()",
    "CREATE TRIGGER fleet_device_counts_upd AFTER UPDATE OF labels, hardware, installed, token_revoked_at "
    "ON fleet_device FOR EACH ROW WHEN (OLD.labels IS DISTINCT FROM NEW.labels "
    "OR OLD.hardware IS DISTINCT FROM NEW.hardware OR OLD.installed IS DISTINCT FROM NEW.installed "
    "OR (OLD.token_revoked_at IS NULL) <> (NEW.token_revoked_at IS NULL)) EXECUTE FUNCTION fleet_device_counts()",
    "CREATE TRIGGER fleet_device_counts_trunc AFTER TRUNCATE ON fleet_device FOR EACH STATEMENT "
    "EXECUTE FUNCTION fleet_device_counts_truncate()",
    # a campaign change walks the devices of a key range by this index (rollout/moves.py)
    "CREATE INDEX IF NOT EXISTS device_key_id ON fleet_device (fleet_device_key(id), id)",
    # count the devices already enrolled, once
    "INSERT INTO fleet_profilecountdelta (profile_key, slot, n) SELECT fleet_device_profile(labels, hardware, "
    "installed, token_revoked_at IS NOT NULL), fleet_device_key(id), 1 FROM fleet_device",
]

DOWN = [
    "DROP INDEX IF EXISTS device_key_id",
    "DROP TRIGGER IF EXISTS fleet_device_counts_ins ON fleet_device",
    "DROP TRIGGER IF EXISTS fleet_device_counts_del ON fleet_device",
    "DROP TRIGGER IF EXISTS fleet_device_counts_upd ON fleet_device",
    "DROP TRIGGER IF EXISTS fleet_device_counts_trunc ON fleet_device",
    "DROP FUNCTION IF EXISTS fleet_device_counts_truncate()",
    "DROP FUNCTION IF EXISTS fleet_device_counts()",
    "DROP FUNCTION IF EXISTS fleet_device_profile(jsonb, jsonb, jsonb, boolean)",
    "DROP FUNCTION IF EXISTS fleet_profile_key(jsonb, jsonb, jsonb, boolean)",
    "DROP FUNCTION IF EXISTS fleet_profile_hw(jsonb)",
    "DROP FUNCTION IF EXISTS fleet_device_key(uuid)",
]


def up(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from fleet.kept import FOLD_SQL

    for sql in [*UP, FOLD_SQL]:
        schema_editor.execute(sql, None)


def down(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for sql in DOWN:
        schema_editor.execute(sql, None)


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0005_device_conditions"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeviceProfile",
            fields=[
                ("key", models.UUIDField(primary_key=True, serialize=False)),
                ("labels", models.JSONField(default=dict)),
                (
                    "hardware",
                    models.JSONField(
                        default=dict, help_text="the fields placement reads: arch, ram_mb, ort_version, …"
                    ),
                ),
                ("installed", models.JSONField(default=dict)),
                ("revoked", models.BooleanField(default=False)),
            ],
        ),
        migrations.CreateModel(
            name="ProfileCount",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("profile_key", models.UUIDField()),
                ("level", models.SmallIntegerField()),
                ("slot", models.IntegerField()),
                ("n", models.BigIntegerField(default=0)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("profile_key", "level", "slot"), name="profilecount_unique")
                ],
                "indexes": [models.Index(fields=["level", "slot"], name="profilecount_level_slot")],
            },
        ),
        migrations.CreateModel(
            name="ProfileCountDelta",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("profile_key", models.UUIDField()),
                ("slot", models.IntegerField(help_text="the device key, 0..9999")),
                ("n", models.SmallIntegerField()),
            ],
        ),
        migrations.AddIndex(
            model_name="deviceevent",
            index=models.Index(
                condition=models.Q(("kind", "install_failed")),
                fields=["model_name", "version_label", "device"],
                name="event_install_failed",
            ),
        ),
        migrations.RunPython(up, down),
    ]
