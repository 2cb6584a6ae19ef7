from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reputation", "0001_initial"),
    ]

    operations = [
        migrations.RenameField(model_name="auditevidence", old_name="max_abs_diff", new_name="relative_error"),
        migrations.AddField(
            model_name="auditevidence",
            name="fingerprint",
            field=models.CharField(blank=True, max_length=128),
        ),
        migrations.AddConstraint(
            model_name="auditevidence",
            constraint=models.UniqueConstraint(
                condition=models.Q(("fingerprint", ""), _negated=True),
                fields=("node", "fingerprint"),
                name="evidence_once_per_result",
            ),
        ),
    ]
