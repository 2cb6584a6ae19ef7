from django.db import migrations


def merge_nodes_by_key(apps, schema_editor):
    """One row per node identity key: fold the rows earlier restarts made (see portal.swarm.identity)."""
    from portal.swarm.identity import merge_nodes_by_key as merge

    merge(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("swarm", "0006_node_key"),
        ("reputation", "0003_clientreport"),
        ("ledger", "0005_transaction_funded"),
    ]

    operations = [migrations.RunPython(merge_nodes_by_key, migrations.RunPython.noop)]
