"""The embedded Celery broker (no Redis): kombu's folder transport, with messages that appear whole.

kombu's filesystem transport creates a message file and then writes it, while the consumer lists the
folder, moves every ``.msg`` file it finds and parses it; when the consumer is quicker than the
writer it parses an empty file, raises, and the worker and beat (one process under ``make demo``)
shut down: the ledger stops settling and nodes stop expiring. Here a message is written under a name
the consumer ignores and renamed into place in one step (``os.replace`` is atomic on one file system).
Selected by ``CELERY_BROKER_TRANSPORT`` in ``portal/settings.py`` whenever the broker is a folder.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """A folder-backed channel whose messages are renamed into the queue folder once complete."""

    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue``: written under a ``.partial`` name, then renamed to its ``.msg`` name."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"  # "<stamp>_<uuid>.<queue>.msg.partial": not a message of any queue
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.remove(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel
