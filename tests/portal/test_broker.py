"""The embedded Celery broker: a consumer never sees a message file before it is whole."""

from __future__ import annotations

import os
import threading

from django.conf import settings
from kombu import Connection

import portal.broker as broker
from portal.celery import app


def _connection(folder) -> Connection:
    opts = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://", transport="portal.broker:Transport", transport_options=opts)


def test_a_message_is_invisible_to_consumers_until_it_is_written(tmp_path, monkeypatch):
    seen_while_writing = []
    encode = broker.str_to_bytes

    def look_then_encode(text):  # runs between creating the file and writing it
        seen_while_writing.extend(n for n in os.listdir(tmp_path) if n.endswith(".msg"))
        return encode(text)

    monkeypatch.setattr(broker, "str_to_bytes", look_then_encode)
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("jobs")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    assert seen_while_writing == []  # kombu's own transport shows an empty .msg file at this point
    assert os.listdir(tmp_path) == []


def test_a_consumer_reading_while_a_producer_writes_gets_every_message_whole(tmp_path):
    count, got, errors = 300, [], []

    def produce():
        with _connection(tmp_path) as conn:
            queue = conn.SimpleQueue("jobs")
            for i in range(count):
                queue.put({"n": i, "pad": "x" * 2000})
            queue.close()

    def consume():
        try:
            with _connection(tmp_path) as conn:
                queue = conn.SimpleQueue("jobs")
                while len(got) < count:
                    message = queue.get(timeout=30)
                    got.append(message.payload["n"])
                    message.ack()
                queue.close()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(got) == list(range(count))


def test_the_portal_uses_it_whenever_the_broker_is_a_folder():
    transport = app.connection_for_write().transport
    assert isinstance(transport, broker.Transport) == settings.CELERY_BROKER_URL.startswith("filesystem")
