from django.db import migrations, models


class Migration(migrations.Migration):
    """Campaigns made before keep their sha256 buckets (their devices must not move); new ones use keys."""

    dependencies = [
        ("rollout", "0005_campaign_windows_conditions"),
    ]

    operations = [
        migrations.AddField(
            model_name="campaign",
            name="bucketing",
            field=models.CharField(default="sha256", max_length=8),
        ),
        migrations.AlterField(
            model_name="campaign",
            name="bucketing",
            field=models.CharField(
                default="key",
                help_text="how a device's bucket is computed (rollout/placement.py): 'key' (kept counts answer its "
                "waves), 'sha256' (campaigns made before, counted by a scan)",
                max_length=8,
            ),
        ),
    ]
