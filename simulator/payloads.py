"""What goes on the wire for a reading: topic names and payloads (json, number, senml), and garbage.

Values and timestamps are written with ``repr`` (the shortest text that parses back to the
same float), so the value a subscriber decodes is exactly the value the ground truth
classified, and ``(device_id, ts)`` found downstream matches the published key bit for bit.

>>> fmt = PayloadFormat("json")
>>> fmt.reading(-18.25, 1764218400.5, 7)
b'{"value":-18.25,"ts":1764218400.5,"seq":7,"unit":"C"}'
>>> PayloadFormat("number").reading(4.5, 1.0, 0)
b'4.5'
>>> PayloadFormat("senml").reading(4.5, 1.0, 0)
b'[{"n":"temperature","u":"Cel","v":4.5,"t":1.0}]'
>>> topic_for("sensors/{device_id}/{metric}", device_id="rack-0001", metric="temperature")
'sensors/rack-0001/temperature'
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Final, Literal

FormatName = Literal["json", "number", "senml"]
FORMATS: Final[tuple[FormatName, ...]] = ("json", "number", "senml")
METRIC: Final = "temperature"

_PLACEHOLDERS: Final = {"device_id", "metric", "profile"}


class TopicTemplateError(ValueError):
    """A topic template that cannot name one topic per device."""


def check_template(template: str) -> str:
    """Validate ``--topic-template``: placeholders from ``{device_id}``, ``{metric}``, ``{profile}``.

    ``{device_id}`` is required (a topic per device); MQTT wildcards are not allowed in a topic name.
    """
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise TopicTemplateError(f"bad topic template {template!r}: {exc}") from None
    unknown = names - _PLACEHOLDERS
    if unknown:
        raise TopicTemplateError(
            f"topic template {template!r} uses unknown placeholder(s) {sorted(unknown)};"
            f" allowed: {{device_id}}, {{metric}}, {{profile}}"
        )
    if "device_id" not in names:
        raise TopicTemplateError(f"topic template {template!r} must contain {{device_id}}")
    if "+" in template or "#" in template or not template:
        raise TopicTemplateError(f"topic template {template!r}: MQTT topic names cannot contain + or #")
    return template


def topic_for(template: str, *, device_id: str, metric: str = METRIC, profile: str = "") -> str:
    return template.format(device_id=device_id, metric=metric, profile=profile or device_id.rsplit("-", 1)[0])


def topics_for(template: str, device_ids: Sequence[str]) -> list[str]:
    return [topic_for(template, device_id=d) for d in device_ids]


class PayloadFormat:
    """Formats readings and malformed payloads for one of :data:`FORMATS`."""

    def __init__(self, name: FormatName):
        if name not in FORMATS:
            raise ValueError(f"unknown payload format {name!r}; choose from {', '.join(FORMATS)}")
        self.name: FormatName = name
        self.has_ts = name != "number"
        self.has_seq = name == "json"
        self._template = {
            "json": b'{"value":%r,"ts":%r,"seq":%d,"unit":"C"}',
            "number": b"%r",
            "senml": b'[{"n":"temperature","u":"Cel","v":%r,"t":%r}]',
        }[name]

    def reading(self, value: float, ts: float, seq: int) -> bytes:
        """One reading's payload (``value`` and ``ts`` must be Python floats, not numpy scalars)."""
        if self.name == "json":
            return self._template % (value, ts, seq)
        if self.name == "number":
            return self._template % value
        return self._template % (value, ts)

    def readings(self, values: list[float], ts: list[float], seqs: list[int]) -> list[bytes]:
        """Many payloads at once (the publisher's hot path)."""
        template = self._template
        if self.name == "json":
            return [template % args for args in zip(values, ts, seqs, strict=True)]
        if self.name == "number":
            return [template % v for v in values]
        return [template % args for args in zip(values, ts, strict=True)]

    def malformed(self, variant: int, ts: float) -> bytes:
        """Garbage that a bridge must dead-letter: ``variant`` picks one of :data:`MALFORMED_KINDS`."""
        kind = MALFORMED_KINDS[variant % len(MALFORMED_KINDS)]
        if kind == "not_utf8":
            return b"\xff\xfe\x00garbage\x81"
        if self.name == "number":
            return {"truncated": b"-", "wrong_type": b"hot", "missing_value": b"{}", "non_finite": b"NaN"}[
                kind
            ]
        if self.name == "senml":
            return {
                "truncated": b'[{"n":"temperature","v":',
                "wrong_type": b'[{"n":"temperature","u":"Cel","v":"hot","t":%r}]' % ts,
                "missing_value": b'[{"n":"temperature","u":"Cel","t":%r}]' % ts,
                "non_finite": b'[{"n":"temperature","u":"Cel","v":NaN,"t":%r}]' % ts,
            }[kind]
        return {
            "truncated": b'{"value":12.5,"ts":',
            "wrong_type": b'{"value":"hot","ts":%r,"unit":"C"}' % ts,
            "missing_value": b'{"ts":%r,"unit":"C"}' % ts,
            "non_finite": b'{"value":NaN,"ts":%r,"unit":"C"}' % ts,
        }[kind]


#: The kinds of garbage a malformed-payload anomaly sends, in variant order.
MALFORMED_KINDS: Final = ("truncated", "wrong_type", "missing_value", "non_finite", "not_utf8")
