"""The default model every fresh portal serves: SmolLM2-135M-Instruct (30 blocks, hidden 576)."""

from django.db import migrations


def seed(apps, schema_editor):
    SwarmModel = apps.get_model("swarm", "SwarmModel")
    SwarmModel.objects.get_or_create(
        name="smollm2",
        defaults={"num_blocks": 30, "hidden_size": 576, "description": "SmolLM2-135M-Instruct (Llama, 30 blocks)"},
    )


class Migration(migrations.Migration):
    dependencies = [("swarm", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
