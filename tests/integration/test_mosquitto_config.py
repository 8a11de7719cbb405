"""The stack's Mosquitto keeps what a pipeline needs: a persistent session's QoS 1 messages
survive a broker restart, and a slow subscriber's queue has no limit that drops messages."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from thermoflow.stack.services import Mosquitto


def session_client(broker: Mosquitto, client_id: str, received: list[bytes], done: threading.Event,
                   expected: int) -> paho.Client:  # fmt: skip
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        received.append(bytes(message.payload))
        if len(received) >= expected:
            done.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    return client


def test_persistent_session_survives_a_broker_restart_and_queues_without_limit(
    private_broker: Mosquitto,
) -> None:
    broker = private_broker
    topic = f"test/{uuid.uuid4().hex[:8]}/temperature"
    client_id = f"test-session-{uuid.uuid4().hex[:8]}"
    count = 3000  # above mosquitto's default per-client queue of 1000
    received: list[bytes] = []
    done = threading.Event()

    # Subscribe with a persistent session, then go away.
    subscriber = session_client(broker, client_id, received, done, count)
    subscriber.loop_start()
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    subscriber.disconnect()
    subscriber.loop_stop()

    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    infos = [publisher.publish(topic, str(i).encode(), qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()

    broker.down()  # the queued messages must be persisted on the way down ...
    broker.up()  # ... and come back with the session

    subscriber = session_client(broker, client_id, received, done, count)
    subscriber.loop_start()
    try:
        assert done.wait(30), f"got {len(received)} of {count} after the restart"
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    assert sorted(int(p) for p in received) == list(range(count))
