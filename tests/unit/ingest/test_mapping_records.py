"""Topic mapping, the Kafka records of one MQTT message, and the sink's row decoding."""

from __future__ import annotations

import pytest

from thermoflow import topics
from thermoflow.events import Reading, decode_reading, encode, parse_dead_letter_headers
from thermoflow.ingest.mapping import TopicFields, TopicTemplate, TopicTemplateError, check_filter
from thermoflow.ingest.records import Translator
from thermoflow.ingest.rows import pg_micros, rows_from_values
from thermoflow.ingest.settings import IngestSettings
from thermoflow.settings import ConfigError, load_settings


def test_template_extracts_device_and_metric() -> None:
    template = TopicTemplate("sensors/{device_id}/{metric}")
    assert template.match("sensors/freezer-0042/temperature") == TopicFields("freezer-0042", "temperature")
    assert template.match("sensors/freezer-0042/temperature/extra") is None
    assert template.match("sensors//temperature") is None  # an empty level names no device
    assert template.match("sensors/a.b[c]/x") == TopicFields("a.b[c]", "x")  # regex characters are literal


def test_template_within_a_level_and_without_metric() -> None:
    template = TopicTemplate("site-1/dev-{device_id}")
    assert template.match("site-1/dev-7") == TopicFields("7", None)
    assert template.subscription_filter == "site-1/+"


@pytest.mark.parametrize(
    "bad", ["sensors/{device}/x", "sensors/+/{device_id}", "a/{device_id}/{device_id}", "a/{"]
)
def test_bad_templates_are_refused(bad: str) -> None:
    with pytest.raises(TopicTemplateError):
        TopicTemplate(bad)


@pytest.mark.parametrize("bad", ["a/b+/c", "a/#/b", "", "$share/g/a/+"])
def test_bad_filters_are_refused(bad: str) -> None:
    with pytest.raises(TopicTemplateError):
        check_filter(bad)


def test_settings_name_each_bad_value_and_build_shared_filters() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(IngestSettings, topic_template="x/{nope}", mqtt_topics="a/#/b", mqtt_receive_maximum=0)
    message = str(caught.value)
    for name in ("topic_template", "mqtt_topics", "mqtt_receive_maximum", "THERMOFLOW_MQTT_TOPICS"):
        assert name in message
    settings = load_settings(IngestSettings, mqtt_topics="a/+/t, b/#", mqtt_share_group="bridges")
    assert settings.topic_filters == ["$share/bridges/a/+/t", "$share/bridges/b/#"]


def test_a_reading_becomes_a_record_keyed_by_device_with_the_mqtt_topic_header() -> None:
    translator = Translator(
        TopicTemplate("sensors/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d"
    )
    out = translator.translate(
        "sensors/f-1/temperature", b'{"value": 50, "unit": "F", "ts": 10.0}', received_at=11.0
    )
    assert out.error is None
    [record] = out.records
    assert (record.topic, record.key) == ("r", b"f-1")
    assert decode_reading(record.value) == Reading(
        device_id="f-1", metric="temperature", value=10.0, ts=10.0, received_at=11.0
    )
    assert record.headers == [
        (topics.HEADER_MQTT_TOPIC, b"sensors/f-1/temperature"),
        (topics.HEADER_CONTENT_TYPE, b"application/json"),
    ]


def test_a_bad_message_becomes_one_dead_letter_with_the_original_bytes() -> None:
    translator = Translator(
        TopicTemplate("sensors/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d"
    )
    out = translator.translate("elsewhere/x", b'{"value": 1}', received_at=5.0)
    [record] = out.records
    assert (record.topic, record.key, record.value) == ("d", None, b'{"value": 1}')
    letter = parse_dead_letter_headers(record.headers)
    assert (letter.stage, letter.source, letter.failed_at) == ("ingest", "elsewhere/x", 5.0)
    assert "no device id" in letter.error and "does not match the template" in letter.error


def test_senml_pack_becomes_several_records() -> None:
    translator = Translator(
        TopicTemplate("sensors/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d"
    )
    out = translator.translate(
        "sensors/f-1/temperature", b'[{"bt":1700000000,"v":1},{"t":1,"v":2}]', received_at=1700000005.0
    )
    assert [decode_reading(r.value).ts for r in out.records] == [1700000000.0, 1700000001.0]


def test_rows_from_values_keeps_readings_and_names_the_rest() -> None:
    good = encode(Reading(device_id="f-1", value=-18.0, ts=1.5, seq=3, received_at=2.0))
    batch = rows_from_values(
        [good, None, b'{"v": 1, "device_id": "f-2", "value": "x", "ts": 1, "received_at": 1}']
    )
    assert batch.rows == [("f-1", "temperature", -18.0, pg_micros(1.5), 3, pg_micros(2.0))]
    assert [index for index, _ in batch.errors] == [1, 2]
    assert "$.value" in batch.errors[1][1]


def test_a_topics_later_messages_take_the_fast_path_to_the_same_records() -> None:
    translator = Translator(TopicTemplate("s/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d")
    trace = b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-00"
    payload = b'{"value": 50, "unit": "F", "ts": 10.0, "seq": 3}'
    first = translator.translate("s/f-1/humidity", payload, received_at=11.0, traceparent=trace)  # general
    again = translator.translate("s/f-1/humidity", payload, received_at=11.0, traceparent=trace)  # fast
    assert first == again and again.error is None
    assert again.records[0].headers[-1] == ("traceparent", trace)
    assert decode_reading(again.records[0].value).metric == "humidity"


def test_a_topic_naming_an_invalid_device_id_dead_letters_every_message_not_just_the_first() -> None:
    translator = Translator(TopicTemplate("s/{device_id}/{metric}"), readings_topic="r", deadletter_topic="d")
    for _ in range(2):  # the second one finds the topic cached
        out = translator.translate("s/f\ufffd1/temperature", b'{"value": 1.0}', received_at=11.0)
        assert out.error is not None and "device id" in out.error and out.records[0].topic == "d"
