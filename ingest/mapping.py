"""Topic mapping: which device and metric an MQTT topic names, by a template.

>>> template = TopicTemplate("sensors/{device_id}/{metric}")
>>> template.match("sensors/freezer-0042/temperature")
TopicFields(device_id='freezer-0042', metric='temperature')
>>> template.match("other/freezer-0042") is None
True
>>> template.subscription_filter
'sensors/+/+'
"""

from __future__ import annotations

import re
import string
from typing import Final, NamedTuple

_PLACEHOLDERS: Final = frozenset({"device_id", "metric"})


class TopicTemplateError(ValueError):
    """A topic template or filter that cannot work."""


class TopicFields(NamedTuple):
    """What a topic says about a reading; None where the template does not name it."""

    device_id: str | None
    metric: str | None


class TopicTemplate:
    """A template like ``sensors/{device_id}/{metric}``; each placeholder matches within one level."""

    def __init__(self, template: str) -> None:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise TopicTemplateError(f"bad topic template {template!r}: {exc}") from None
        names = [field for _, field, _, _ in parsed if field is not None]
        unknown = set(names) - _PLACEHOLDERS
        if unknown:
            raise TopicTemplateError(
                f"topic template {template!r} uses unknown placeholder(s) {sorted(unknown)};"
                " allowed: {device_id}, {metric}"
            )
        if len(names) != len(set(names)):
            raise TopicTemplateError(f"topic template {template!r} repeats a placeholder")
        if "+" in template or "#" in template:
            raise TopicTemplateError(f"topic template {template!r}: use placeholders, not + or #")
        pattern = "".join(
            re.escape(literal) + (f"(?P<{field}>[^/]+)" if field else "") for literal, field, _, _ in parsed
        )
        self.template = template
        self._regex = re.compile(pattern + r"\Z")
        self._names = frozenset(names)

    def match(self, topic: str) -> TopicFields | None:
        """The fields of ``topic``, or None when it does not fit the template."""
        found = self._regex.match(topic)
        if found is None:
            return None
        fields = found.groupdict()
        return TopicFields(device_id=fields.get("device_id"), metric=fields.get("metric"))

    @property
    def subscription_filter(self) -> str:
        """The MQTT filter matching every topic of this template (a placeholder level becomes ``+``)."""
        levels = []
        for level in self.template.split("/"):
            levels.append("+" if any(f"{{{name}}}" in level for name in self._names) else level)
        return "/".join(levels)


def check_filter(topic_filter: str) -> str:
    """Validate an MQTT topic filter (``+`` a whole level, ``#`` only last).

    >>> check_filter("sensors/+/temperature")
    'sensors/+/temperature'
    >>> check_filter("sensors/#/x")
    Traceback (most recent call last):
    ...
    thermoflow.ingest.mapping.TopicTemplateError: topic filter 'sensors/#/x': '#' must be the whole last level
    """
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicTemplateError(f"topic filter {topic_filter!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise TopicTemplateError(f"topic filter {topic_filter!r}: '+' must be a whole level")
    if not topic_filter or topic_filter.startswith("$share/"):
        raise TopicTemplateError(
            f"topic filter {topic_filter!r}: give a plain filter (set the share group on its own)"
        )
    return topic_filter
