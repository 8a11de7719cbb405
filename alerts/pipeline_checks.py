"""The pipeline's own alerts, decided: measurements in, alert events and clears out. Pure.

Operators hear about a broken pipeline the way they hear about a warm freezer. Each watched
quantity is one :class:`PipelineCheck`, one incident under the device id ``pipeline``
(:data:`~thermoflow.events.PIPELINE_DEVICE`) with a rule id of its own, raised on
``telemetry.alerts`` like any other alert, so the alert store records it and the notifier
notifies it through the usual channels:

* ``deadletter_rate`` (:func:`deadletter_rule`): dead letters per minute, averaged over the
  window (:class:`RateWindow`), above ``deadletter_rate_alert``. The average is the debounce:
  one bad payload is a blip, a stream of them is a broken producer or a broken stage.
* ``consumer_lag`` (:func:`lag_rule`, one per watched group): records a group has not yet
  committed, above ``consumer_lag_alert`` at every check for a whole window (``hold``): a burst
  that drains in time never pages, a group that is stuck or too slow does.
* ``breaker_open`` (:func:`breaker_rule`, one per channel): a channel's circuit breaker not
  closed for longer than ``breaker_open_alert`` (:func:`breaker_open_for`); the setting itself
  is the debounce, a breaker that trips and recovers within it never pages.

Each condition is one of :data:`~thermoflow.events.CLEARED_CONDITIONS`: its incident stays open
until a :class:`~thermoflow.events.Clear` says the trouble is over (the rate back under its limit,
the lag under its limit for a whole window, the breaker closed by a delivery), not after
``resolve_after`` of quiet, since one alert is all the watcher sends while the trouble lasts.

Ids: an alert's ``reading_ts`` is when the trouble began as the watcher saw it (for a breaker,
when it tripped), so the alert sent again after a failed send, or replayed from the topic, has
the same ``alert_id`` and is stored once. A watcher that starts (a restart, another instance
taking over) did not raise what an earlier one left open (``left_open``): its first verdict that
all is well clears that with ``since == cleared_at``, so an incident is never left open by a
process that died; if the trouble still lasts, its own alert joins the open incident.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from thermoflow.events import PIPELINE_DEVICE, AlertEvent, Clear, Condition, Severity, new_alert

PipelineEvent = AlertEvent | Clear


def deadletter_rule(topic: str) -> str:
    """The rule id of the dead-letter rate of ``topic``.

    >>> deadletter_rule("telemetry.deadletter")
    'deadletter-rate/telemetry.deadletter'
    """
    return f"deadletter-rate/{topic}"


def lag_rule(group: str) -> str:
    """The rule id of consumer group ``group``'s lag: one incident per group.

    >>> lag_rule("thermoflow-sink")
    'consumer-lag/thermoflow-sink'
    """
    return f"consumer-lag/{group}"


def breaker_rule(channel: str) -> str:
    """The rule id of channel ``channel``'s circuit breaker: one incident per channel.

    >>> breaker_rule("webhook")
    'breaker-open/webhook'
    """
    return f"breaker-open/{channel}"


@dataclass
class PipelineCheck:
    """One watched quantity of the pipeline and its incident: above ``limit`` for ``hold`` seconds
    raises it, at or below ``limit`` for ``hold`` seconds clears it.

    :meth:`observe` returns the record to send for a measurement, the same one again at each
    measurement until :meth:`sent` says Kafka has it, so a failed send is retried, not lost.

    >>> check = PipelineCheck(rule_id="consumer-lag/g", condition="consumer_lag", metric="lag",
    ...                       severity="warning", limit=100.0, hold=60.0)
    >>> check.observe(now=0.0, value=500.0) is None  # above, not yet for a whole minute
    True
    >>> alert = check.observe(now=60.0, value=800.0)
    >>> alert.device_id, alert.reading_ts, alert.value
    ('pipeline', 0.0, 800.0)
    >>> check.sent(alert)
    >>> check.observe(now=70.0, value=900.0) is None  # raised once, not at every check
    True
    >>> check.observe(now=80.0, value=10.0) is None  # under, not yet for a whole minute
    True
    >>> clear = check.observe(now=140.0, value=0.0)
    >>> clear.since, clear.cleared_at
    (0.0, 80.0)
    """

    rule_id: str
    condition: Condition
    metric: str
    severity: Severity
    limit: float
    hold: float = 0.0
    bad_since: float | None = field(default=None, init=False)
    good_since: float | None = field(default=None, init=False)
    #: The ``reading_ts`` of the alert out on the topic and not cleared yet, if any.
    reported: float | None = field(default=None, init=False)

    def observe(
        self, *, now: float, value: float | None, began: float | None = None, left_open: bool = False
    ) -> PipelineEvent | None:
        """Fold one measurement in; the alert or clear to send now, if any.

        Args:
            now: the wall-clock time of the measurement.
            value: the measured quantity; None when there is nothing to judge (Kafka did not
                answer, a group has committed nothing yet): the verdict waits, the runs go on.
            began: when the trouble measured began, where the measurement knows it better than
                the first check that saw it (a breaker's trip time).
            left_open: whether this check's incident is open without this watcher having raised
                it (an earlier process did): it is cleared like one's own once all is well.
        """
        if value is None:
            return None
        if value > self.limit:
            self.good_since = None
            if self.bad_since is None:
                self.bad_since = now if began is None else min(began, now)
            if self.reported is None and now - self.bad_since >= self.hold:
                return self._alert(now=now, value=value, began=self.bad_since)
            return None
        self.bad_since = None
        if self.good_since is None:
            self.good_since = now
        if (self.reported is not None or left_open) and now - self.good_since >= self.hold:
            since = self.reported if self.reported is not None else self.good_since
            return Clear(
                device_id=PIPELINE_DEVICE,
                rule_id=self.rule_id,
                condition=self.condition,
                since=since,
                cleared_at=max(self.good_since, since),
                detected_at=now,
            )
        return None

    def sent(self, event: PipelineEvent) -> None:
        """Kafka has acked ``event`` (one :meth:`observe` returned): it need not be sent again."""
        self.reported = event.reading_ts if isinstance(event, AlertEvent) else None

    def _alert(self, *, now: float, value: float, began: float) -> AlertEvent:
        return new_alert(
            device_id=PIPELINE_DEVICE,
            metric=self.metric,
            rule_id=self.rule_id,
            severity=self.severity,
            condition=self.condition,
            threshold=self.limit,
            value=value,
            reading_ts=began,
            detected_at=now,
        )


@dataclass
class RateWindow:
    """A counter's rate per minute over (at least) the last ``window`` seconds, from its running totals.

    >>> rate = RateWindow(window=60.0)
    >>> rate.observe(now=0.0, total=100) is None  # no whole window seen yet
    True
    >>> rate.observe(now=30.0, total=110) is None
    True
    >>> rate.observe(now=60.0, total=130)
    30.0
    >>> rate.observe(now=90.0, total=130)  # over 30 s .. 90 s
    20.0
    """

    window: float
    _samples: deque[tuple[float, int]] = field(default_factory=deque, init=False, repr=False)

    def observe(self, *, now: float, total: int) -> float | None:
        """Take the counter's total at ``now``; its rate per minute, or None before a whole window."""
        if self._samples and total < self._samples[-1][1]:  # the counter went back (topic recreated)
            self._samples.clear()
        self._samples.append((now, total))
        # Keep the newest sample at or before the window's start, and those after it.
        while len(self._samples) >= 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        start, start_total = self._samples[0]
        if now - start < self.window:
            return None
        return (total - start_total) * 60.0 / (now - start)


def breaker_open_for(*, tripped_at: float | None, successes: int, now: float) -> float | None:
    """Seconds a breaker has not been closed (0: closed, and a send has gone through; None: closed
    and no send yet, which proves nothing about the channel). All in the breaker's own clock.

    >>> breaker_open_for(tripped_at=100.0, successes=3, now=250.0)
    150.0
    >>> breaker_open_for(tripped_at=None, successes=1, now=250.0), breaker_open_for(
    ...     tripped_at=None, successes=0, now=250.0)
    (0.0, None)
    """
    if tripped_at is not None:
        return max(0.0, now - tripped_at)
    return 0.0 if successes else None
