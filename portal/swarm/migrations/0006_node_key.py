import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def claim_unambiguous_keys(apps, schema_editor):
    """Keys announced before proofs existed: owned by their one account; a key announced by several
    accounts stays unowned (earns nothing) until a node proves it holds it."""
    from swarmnode.trust.receipts import signing_key

    Node = apps.get_model("swarm", "Node")
    NodeKey = apps.get_model("swarm", "NodeKey")
    owners: dict[str, set[int]] = {}
    for public_key, owner_id in Node.objects.exclude(public_key="").values_list("public_key", "owner_id").iterator():
        try:
            owners.setdefault(signing_key(public_key), set()).add(owner_id)
        except ValueError:
            continue
    NodeKey.objects.bulk_create(
        [NodeKey(signing_key=key, owner_id=ids.pop()) for key, ids in owners.items() if len(ids) == 1],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("swarm", "0005_node_relay_capacity"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="NodeKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("signing_key", models.CharField(max_length=64, unique=True)),
                ("claimed_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "owner",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="node_keys",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
        migrations.RunPython(claim_unambiguous_keys, migrations.RunPython.noop),
    ]
