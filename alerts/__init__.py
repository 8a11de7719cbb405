"""thermoflow's `alerts` component (see ../shared/DESIGN.md): the alert store and the notifier.

Layout, pure first:

* ``lifecycle.py`` — the incident lifecycle (fire, escalate, repeat, resolve) as pure functions
  with the clock passed in; ``tracker.py`` — the notifier's per-(device, rule) memory on top of it;
  ``notification.py`` — what a notification says and its idempotency key; ``routing.py`` — the
  routing file; ``breaker.py`` — the per-channel circuit breaker (pure, injected clock).
* ``channels.py`` (log, webhook, Slack, email), ``delivery.py`` (routing, retries with tenacity,
  breakers, dead letters), ``kafka_io.py`` (state topic, dead letters, batch decoding),
  ``store.py`` and ``queries.py`` (PostgreSQL), ``notifier.py`` — the adapters.
* ``cli.py`` — `thermoflow alerts store | notify | list | ack`; ``settings.py`` — AlertsSettings.

Clocks: breach times are the alert's ``reading_ts`` (stable across re-processing); whether a
quiet incident resolves, and when a repeat is due, is decided by the processing clock (wall
clock in production, injected in tests) against those times. See ``lifecycle.py``.

The store and the notifier are independent consumers of ``telemetry.alerts``: the notifier keeps
its state in a compacted Kafka topic of its own, so a database outage never silences it.
"""
