"""The Celery application (periodic tracker work). Start with ``celery -A portal worker --beat``."""

import os
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _make_broker_folders(sender, **kwargs):
    # The embedded (filesystem) broker needs its folders, and beat the folder of its schedule file.
    folders = [(sender.conf.broker_transport_options or {}).get(key) for key in ("data_folder_in", "processed_folder")]
    folders.append(str(Path(sender.conf.beat_schedule_filename).parent))
    for folder in filter(None, folders):
        Path(folder).mkdir(parents=True, exist_ok=True)
