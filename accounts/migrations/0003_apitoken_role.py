from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_roles")]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="role",
            field=models.CharField(
                blank=True,
                default="",
                help_text="highest role the token acts with (viewer: read-only); empty: its owner's role",
                max_length=16,
            ),
        ),
    ]
