"""The stack's Mosquitto keeps what a pipeline needs: a persistent session's QoS 1 messages
survive a broker restart, a slow subscriber's queue has no limit that drops messages, and a
broker crash loses only what it acked in its last save window (README)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from thermoflow.stack.process import pid_alive
from thermoflow.stack.services import AUTOSAVE_INTERVAL_S, Mosquitto


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


def offline_session(broker: Mosquitto, topic: str, client_id: str) -> None:
    """Subscribe at QoS 1 with a persistent session, then go away: messages queue in the broker."""
    subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.connect(broker.host, broker.port)
    subscriber.loop_start()
    subscriber.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    subscriber.disconnect()
    subscriber.loop_stop()


def publish_acked(broker: Mosquitto, topic: str, count: int) -> None:
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    publisher.max_inflight_messages_set(1000)
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    infos = [publisher.publish(topic, str(i).encode(), qos=1) for i in range(count)]
    for info in infos:
        info.wait_for_publish(30)
    assert all(info.is_published() for info in infos)  # every one acked by the broker
    publisher.disconnect()
    publisher.loop_stop()


def kill_9(broker: Mosquitto) -> None:
    pid = broker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)


def test_a_broker_crash_keeps_what_it_acked_before_its_save_window(private_broker: Mosquitto) -> None:
    """README: a kill -9 of Mosquitto loses at most what it acked in the last autosave_interval + 1 s."""
    broker = private_broker
    topic = f"test/{uuid.uuid4().hex[:8]}/temperature"
    client_id = f"test-session-{uuid.uuid4().hex[:8]}"
    count = 5000
    offline_session(broker, topic, client_id)
    publish_acked(broker, topic, count)
    # The promise's window, and one second more for the save itself; with the old
    # `autosave_interval 10` the next save was up to 11 s away and these were all lost.
    time.sleep(AUTOSAVE_INTERVAL_S + 2)
    kill_9(broker)  # no clean shutdown: only what the broker saved on its own is on disk
    broker.up()

    received: list[bytes] = []
    done = threading.Event()
    subscriber = session_client(broker, client_id, received, done, count)
    subscriber.loop_start()
    try:
        done.wait(30)
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    survived = {int(p) for p in received}
    assert sorted(set(range(count)) - survived) == [], f"{count - len(survived)} acked messages lost"
