"""Query and form parameters checked before they reach SQL: a bad one is a 400 that says why.

Pure functions over strings; :class:`ParamError` carries the message the page shows.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Final, TypeVar

from thermoflow.readings_query import MAX_ID

STATUSES: Final = ("firing", "acknowledged", "resolved", "open")
SEVERITIES: Final = ("warning", "critical")
#: The device page's ranges, to the `thermoflow readings --since` and `--every` they mean: raw rows
#: for an hour, 5-minute points from ``readings_1m`` for a day, hourly ones from ``readings_1h``
#: beyond (a week of 1-minute rows is 10,080 rows to regroup; of hourly ones, 168).
RANGES: Final = {"1h": ("1h", "raw"), "24h": ("24h", "5m"), "7d": ("7d", "1h"), "30d": ("30d", "1h")}
MAX_NOTE: Final = 1000
MAX_LIMIT: Final = 500  # rows a page renders at most: 1,000 rows took 35 ms median, up to 100 ms at p95
# ASCII digits only: str.isdigit() admits "²", which int() refuses.
_WHOLE: Final = re.compile(r"-?[0-9]{1,12}")
_LETTER: Final = re.compile(r"([0-9]{1,6}):([0-9]{1,18})")

T = TypeVar("T", bound=str)


class ParamError(ValueError):
    """A parameter a page cannot use; the message names it and what it takes."""


def text(
    params: Mapping[str, str], name: str, *, max_len: int = MAX_ID, allow_newlines: bool = False
) -> str | None:
    """A free-text parameter: None when absent or empty, else 1..``max_len`` printable characters.

    >>> text({"device": "freezer-1"}, "device")
    'freezer-1'
    >>> text({"device": "a\\x1b[31m"}, "device")
    Traceback (most recent call last):
    ...
    thermoflow.console.params.ParamError: device contains a control character (U+001B)
    """
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) > max_len:
        raise ParamError(f"{name} is {len(value):,} characters long; at most {max_len:,}")
    for char in value:
        if allow_newlines and char in "\r\n\t":
            continue
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ParamError(f"{name} contains a control character (U+{ord(char):04X})")
    return value


def choice(
    params: Mapping[str, str], name: str, options: tuple[str, ...], default: str | None = None
) -> str | None:
    """One of ``options``, or ``default`` when absent.

    >>> choice({"severity": "critical"}, "severity", SEVERITIES)
    'critical'
    >>> choice({"severity": "<b>"}, "severity", SEVERITIES)
    Traceback (most recent call last):
    ...
    thermoflow.console.params.ParamError: severity must be one of warning, critical
    """
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in options:
        raise ParamError(f"{name} must be one of {', '.join(options)}")
    return value


def integer(params: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    """A whole number in ``low..high``.

    >>> integer({"limit": "50"}, "limit", default=100, low=1, high=1000)
    50
    >>> integer({"limit": "9" * 400}, "limit", default=100, low=1, high=1000)
    Traceback (most recent call last):
    ...
    thermoflow.console.params.ParamError: limit must be a whole number from 1 to 1000
    """
    value = params.get(name)
    if value is None or value == "":
        return default
    problem = ParamError(f"{name} must be a whole number from {low} to {high}")
    if not _WHOLE.fullmatch(value):
        raise problem
    number = int(value)
    if not low <= number <= high:
        raise problem
    return number


def letter_ref(value: str) -> tuple[int, int]:
    """A dead letter's ``partition:offset`` in its topic.

    >>> letter_ref("2:1041")
    (2, 1041)
    """
    match = _LETTER.fullmatch(value)
    if match is None:
        raise ParamError("letter must be partition:offset, two whole numbers")
    return int(match.group(1)), int(match.group(2))
