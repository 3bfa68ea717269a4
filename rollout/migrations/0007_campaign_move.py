import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("rollout", "0006_campaign_bucketing"),
    ]

    operations = [
        migrations.CreateModel(
            name="CampaignMove",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(help_text="start, advance, rollback", max_length=16)),
                (
                    "ranges",
                    models.JSONField(default=list, help_text="device key ranges [[a, b), …] the change reaches"),
                ),
                (
                    "cursor",
                    models.JSONField(blank=True, default=dict, help_text='{"range": i, "key": k, "id": "<uuid>"}'),
                ),
                ("done", models.BigIntegerField(default=0)),
                (
                    "total",
                    models.BigIntegerField(default=0, help_text="cohort devices in the ranges, from the kept counts"),
                ),
                ("leased_until", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "campaign",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="moves", to="rollout.campaign"
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at", "-id"],
                "indexes": [models.Index(fields=["finished_at"], name="campaignmove_finished")],
            },
        ),
    ]
