"""The console's pages: overview (live), incidents (acknowledge), device, dead letters (redrive), rules."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from thermoflow.alerts.ack import acknowledge_incident_async
from thermoflow.alerts.queries import AckError, InvalidAck
from thermoflow.console import params, queries
from thermoflow.console.context import (
    CLOSING,
    DEADLETTERS,
    FORM,
    NOTIFIED,
    OVERVIEW,
    POOL,
    RULES,
    SETTINGS,
    render,
    session_of,
)
from thermoflow.console.deadletters import Letter, RedriveError, publish_to_bridge
from thermoflow.errors import ServiceError
from thermoflow.logs import get_logger
from thermoflow.readings_query import plan as history_plan
from thermoflow.rules import DEFAULT_METRIC

log = get_logger(__name__)

#: Seconds an overview stream waits for a sample before it sends a keep-alive comment (and looks
#: whether the server is closing).
SSE_WAIT_S: Final = 1.0
#: Bytes of a payload shown on the dead-letter page.
PAYLOAD_SHOWN: Final = 2000


def _user(request: web.Request) -> str:
    user = session_of(request).user
    assert user is not None  # the security middleware lets no anonymous POST through
    return str(user)


# -- overview ----------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.StreamResponse:
    return render(request, "overview.html", figures=request.app[OVERVIEW].latest)


async def overview_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[OVERVIEW].latest)


async def overview_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the overview's figures as each sample lands (about once a second)."""
    sampler = request.app[OVERVIEW]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    closing = request.app[CLOSING]
    seen = -1
    with contextlib.suppress(ConnectionResetError):  # the page went away
        while not closing.is_set():
            figures = await sampler.wait(seen, SSE_WAIT_S)
            if int(figures.get("sample", 0)) == seen:
                await response.write(b": keep-alive\n\n")
                continue
            seen = int(figures.get("sample", 0))
            await response.write(f"data: {json.dumps(figures, separators=(',', ':'))}\n\n".encode())
    return response


# -- incidents ---------------------------------------------------------------------------------


async def incidents(request: web.Request) -> web.StreamResponse:
    q = request.query
    where = queries.IncidentFilter(
        status=params.choice(q, "status", params.STATUSES),
        severity=params.choice(q, "severity", params.SEVERITIES),
        device_id=params.text(q, "device"),
        rule_id=params.text(q, "rule"),
        limit=params.integer(q, "limit", default=100, low=1, high=params.MAX_LIMIT),
    )
    rows = await request.app[POOL].run(lambda conn: queries.incidents(conn, where))
    return render(request, "incidents.html", incidents=rows, where=where)


def _incident_id(request: web.Request) -> str:
    incident_id = params.text(request.match_info, "incident_id")
    if incident_id is None:
        raise params.ParamError("no incident id")
    return incident_id


async def incident(request: web.Request) -> web.StreamResponse:
    incident_id = _incident_id(request)

    def read(conn: Any) -> tuple[queries.IncidentRow | None, list[queries.Step]]:
        row = queries.incident(conn, incident_id)
        return row, (queries.timeline(conn, row) if row is not None else [])

    row, steps = await request.app[POOL].run(read)
    if row is None:
        raise web.HTTPNotFound(text=f"no incident {incident_id!r}")
    notified = request.app[NOTIFIED].get(incident_id)
    return render(request, "incident.html", incident=row, steps=steps, notified=notified)


async def acknowledge(request: web.Request) -> web.StreamResponse:
    """Acknowledge as `thermoflow alerts ack` does: the row (who, when, the note) and the ack record
    that makes the notifier tell the channels once and stop repeating. A second click changes nothing."""
    incident_id = _incident_id(request)
    form: dict[str, str] = request[FORM]
    note = params.text(form, "note", max_len=params.MAX_NOTE, allow_newlines=True) or ""
    user = _user(request)
    flash = session_of(request).flash
    try:
        done = await acknowledge_incident_async(request.app[SETTINGS], incident_id, by=user, note=note)
    except InvalidAck as exc:
        flash.append(f"not acknowledged: {exc}")
    except AckError as exc:
        if str(exc).startswith("no incident"):
            raise web.HTTPNotFound(text=str(exc)) from None
        flash.append(str(exc))
    except ServiceError as exc:  # PostgreSQL or Kafka unreachable: nothing was stored
        log.warning("console_ack_failed", incident_id=incident_id, user=user, error=str(exc)[:300])
        flash.append(f"not acknowledged, nothing stored; try again: {exc}")
    else:
        log.info("console_ack", incident_id=incident_id, user=user, acknowledged=done.new)
        flash.append("acknowledged" if done.new else "already acknowledged: nothing changed")
    raise web.HTTPSeeOther(f"/incidents/{quote(incident_id, safe='')}")


# -- device ------------------------------------------------------------------------------------


async def device(request: web.Request) -> web.StreamResponse:
    q = request.query
    device_id = params.text(q, "id")
    if device_id is None:
        raise params.ParamError("id: which device? (/device?id=freezer-0042)")
    span = params.choice(q, "range", tuple(params.RANGES), default="24h") or "24h"
    since, every = params.RANGES[span]
    history = history_plan(device_id, since=since, every=every, metric=DEFAULT_METRIC)
    now = datetime.now(UTC)
    start = history.start(now)

    def read(conn: Any) -> tuple[list[dict[str, Any]], list[Any], list[queries.IncidentRow]]:
        return (
            queries.history(conn, history, now),
            queries.alert_points(conn, device_id, since=start),
            queries.incidents(conn, queries.IncidentFilter(device_id=device_id, limit=50)),
        )

    points, alerts, rows = await request.app[POOL].run(read)
    rules = request.app[RULES].current()
    rule = rules.rule_for(device_id, DEFAULT_METRIC) if rules is not None else None
    thresholds = []
    if rule is not None:
        for condition in ("above", "below"):
            for severity, value in rule.thresholds(condition).items():
                thresholds.append({"condition": condition, "severity": severity, "value": value})
    chart = {
        "t": [row["time"].timestamp() for row in points],
        "avg": [row["avg"] for row in points],
        "min": [row["min"] for row in points],
        "max": [row["max"] for row in points],
        "alerts": [[ts.timestamp(), value, severity] for ts, value, severity, _ in alerts],
        "thresholds": thresholds,
        "source": history.source,
    }
    return render(
        request, "device.html", device_id=device_id, span=span, ranges=list(params.RANGES), chart=chart,
        rule=rule, incidents=rows, points=len(points), source=history.source,
    )  # fmt: skip


# -- dead letters ------------------------------------------------------------------------------


async def deadletters(request: web.Request) -> web.StreamResponse:
    reason = params.text(request.query, "reason", max_len=2000)
    tail = request.app[DEADLETTERS]
    letters = tail.letters(reason=reason)[
        : params.integer(request.query, "limit", default=200, low=1, high=5000)
    ]
    done = await request.app[POOL].run(lambda conn: queries.redriven(conn, tail.topic))
    return render(
        request, "deadletters.html", letters=letters, reasons=tail.reasons(), reason=reason, redriven=done,
        topic=tail.topic, keep=tail.keep, caught_up=tail.caught_up.is_set(), shown=PAYLOAD_SHOWN,
        payload=_payload_text,
    )  # fmt: skip


def _payload_text(letter: Letter) -> str:
    """The payload as text for the page (the template escapes it): UTF-8 with bad bytes as U+FFFD."""
    text = letter.payload[:PAYLOAD_SHOWN].decode("utf-8", "replace")
    return text + (" …" if len(letter.payload) > PAYLOAD_SHOWN else "")


async def redrive(request: web.Request) -> web.StreamResponse:
    """Send one dead letter (``letter=partition:offset``) or all with one ``reason`` back to the bridge."""
    form = request[FORM]
    tail = request.app[DEADLETTERS]
    session = session_of(request)
    letter_ref = params.text(form, "letter", max_len=40)
    reason = params.text(form, "reason", max_len=2000)
    if letter_ref is not None:
        found = tail.find(*params.letter_ref(letter_ref))
        if found is None:
            raise web.HTTPNotFound(text=f"no dead letter {letter_ref} among the latest {tail.keep}")
        chosen = [found]
    elif reason is not None:
        chosen = tail.letters(reason=reason)
    else:
        raise params.ParamError("redrive what? give letter=partition:offset or reason=...")
    sendable = [letter for letter in chosen if letter.redrivable is None]
    skipped = len(chosen) - len(sendable)
    user = _user(request)
    settings = request.app[SETTINGS]
    records = [queries.Redrive(tail.topic, x.partition, x.offset, x.source, x.error) for x in sendable]

    def claim_and_send(conn: Any) -> int:
        # Recorded and sent in one transaction: if the broker does not take them, no record stays.
        with conn.transaction():
            claimed = {(r.partition, r.offset) for r in queries.claim_redrives(conn, records, by=user)}
            letters = [x for x in sendable if (x.partition, x.offset) in claimed]
            return publish_to_bridge(settings, letters) if letters else 0

    try:
        sent = await request.app[POOL].run(claim_and_send)
    except (RedriveError, RuntimeError, OSError, ValueError) as exc:  # paho: no connection, refused
        log.warning("console_redrive_failed", user=user, error=str(exc)[:300])
        session.flash.append(f"redrive failed, nothing recorded: {exc}")
    else:
        log.info("console_redrive", user=user, sent=sent, chosen=len(chosen), skipped=skipped)
        already = len(sendable) - sent
        session.flash.append(
            f"sent {sent} back to the bridge"
            + (f"; {already} already redriven before" if already else "")
            + (f"; {skipped} cannot be redriven" if skipped else "")
        )
    raise web.HTTPSeeOther("/deadletters")


# -- rules -------------------------------------------------------------------------------------


async def rules(request: web.Request) -> web.StreamResponse:
    view = request.app[RULES]
    current = view.current()
    return render(request, "rules.html", rules=current, last=view.last, rules_path=str(view.path))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", overview)
    router.add_get("/overview.json", overview_json)
    router.add_get("/overview/events", overview_events)
    router.add_get("/incidents", incidents)
    router.add_get("/incidents/{incident_id}", incident)
    router.add_post("/incidents/{incident_id}/ack", acknowledge)
    router.add_get("/device", device)
    router.add_get("/deadletters", deadletters)
    router.add_post("/deadletters/redrive", redrive)
    router.add_get("/rules", rules)
