"""The operator console (issue 16) in a real headless Chromium, on the whole pipeline.

A small fleet with anomalies runs through the pipeline; `thermoflow console` serves the run's
database and topics. The test logs in with the demo's single token, waits on the overview until
an incident appears live (Server-Sent Events, no reload), acknowledges it in the page with a note
(a double click: one acknowledgement), checks the database and the notifier's webhook saw it
(one ``acknowledged`` notification), checks the device chart drew points and the alert marks,
redrives the fleet's malformed payload (the bridge judges it again: it comes back as one new dead
letter) and saves a screenshot of every page under ``.thermoflow/test-output/<this test>/``.

What the test relies on in the console (its routes and stable element ids) is all in the block
marked EXPECTS; the steps use only those names.

The README's screenshot: ``THERMOFLOW_README_SCREENSHOT=1 .venv/bin/pytest tests/e2e/test_console_browser.py``
also writes the overview to ``docs/console.png`` (off by default, so a test run leaves the tree clean).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from playwright.async_api import Page

from tests.conftest import ROOT, Endpoints
from tests.support.browser import BrowserPage
from thermoflow import db
from thermoflow.observe import kafka_observer
from thermoflow.pipeline_run import PipelineRun

# ---- EXPECTS: what the console offers (thermoflow/console, docs/console.md) -----------------------
CONSOLE_ARGS = ("console", "--host", "127.0.0.1", "--port")  # `thermoflow console ... --port N`
TOKEN_VAR, TOKEN = "THERMOFLOW_CONSOLE_TOKEN", "e2e-operator-token"  # any name logs in with the token
OPERATOR = "e2e-operator"
GROUPS_VAR = "THERMOFLOW_CONSOLE_GROUPS"  # the consumer groups whose lag the overview shows
LOGIN, OVERVIEW, INCIDENTS, DEADLETTERS, RULES = "/login", "/", "/incidents", "/deadletters", "/rules"
INCIDENT, DEVICE = "/incidents/{}", "/device?id={}&range=1h"
LOGIN_USER, LOGIN_PASSWORD, LOGIN_SUBMIT = "input[name=user]", "input[name=password]", "form.login button"
USER, LOGIN_ERROR = "#user", "#login-error"
RATES = ("#rate-mqtt_in", "#rate-kafka", "#rate-stored")  # the overview's live figures, per hop
OPEN = ("#open-critical", "#open-warning")  # open incidents by severity, live
UPDATED = "#updated"  # "waiting for the first sample…" until the stream's first sample
ACK_FORM, ACK_NOTE, ACK_BUTTON = "#ack-form", "#ack-form input[name=note]", "#ack"
STATUS, TIMELINE = "#status", "#timeline"
NOTIFICATIONS = "#notifications"
CHART = "window.thermoflowChart"  # the uPlot object: .data = [t, min, avg, max, alert marks]
LETTER_ROWS = "#letters tr[id^=letter-]"  # one row per dead letter: #letter-<partition>-<offset>
REDRIVE_BUTTON = "form[action='/deadletters/redrive'] button"
ACKNOWLEDGED = "acknowledged"  # the notifier's transition for an acknowledgement
# ---------------------------------------------------------------------------------------------------

SCHEDULE = ROOT / "tests" / "e2e" / "demo_anomalies.yaml"  # incidents from ~35 s, one malformed at 15 s
DEVICES, DURATION = 100, 80.0
RESOLVE_AFTER_S = 300.0  # incidents stay open for the whole test: one can be acknowledged
LIVE_TIMEOUT_MS = 120_000
FLEET = ("--devices", str(DEVICES), "--rate", "1", "--duration", str(DURATION), "--seed", "7",
         "--anomaly-rate", "0", "--anomaly-schedule", str(SCHEDULE))  # fmt: skip
README_SHOT_VAR = "THERMOFLOW_README_SCREENSHOT"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _groups(run: PipelineRun) -> str:
    return ",".join(
        run.names[f"THERMOFLOW_{part}_GROUP"] for part in ("PROCESSOR", "SINK", "STORE", "NOTIFY")
    )


@contextlib.asynccontextmanager
async def _console(run: PipelineRun) -> AsyncIterator[str]:
    """`thermoflow console` on the run's database and topics, as a child; yields its URL once it answers."""
    port = _free_port()
    log = (run.workdir / "console.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "thermoflow", *CONSOLE_ARGS, str(port),
        env={**run.env(), TOKEN_VAR: TOKEN, GROUPS_VAR: _groups(run)}, stdout=log,
        stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(120):
                if proc.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + OVERVIEW) as answer:
                        if answer.status < 500:
                            break
                await asyncio.sleep(0.5)
        if proc.returncode is not None:
            tail = (run.workdir / "console.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"thermoflow console exited {proc.returncode}:\n{tail}")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log.close()


def _acknowledgement(run: PipelineRun, incident_id: str) -> tuple[str, str | None, str | None]:
    with db.connect(run.settings) as conn:
        row = conn.execute(
            "SELECT status, acknowledged_by, ack_note FROM incidents WHERE incident_id = %s", (incident_id,)
        ).fetchone()
    assert row is not None, f"incident {incident_id} shown in the page is not in the database"
    return str(row[0]), row[1], row[2]


async def _until(probe: Callable[[], Awaitable[Any]], what: str, *, tries: int = 120) -> Any:
    """``probe()``'s first true answer, asked once a second; fails saying ``what`` never came."""
    for _ in range(tries):
        found = await probe()
        if found:
            return found
        await asyncio.sleep(1)
    pytest.fail(f"never: {what}")


async def _settle(probe: Callable[[], Awaitable[int]], polls: int = 5) -> int:
    """``probe()``'s count after it stopped changing for ``polls`` one-second polls (a duplicate
    would arrive right behind the first)."""
    last, still = await probe(), 0
    while still < polls:
        await asyncio.sleep(1)
        now = await probe()
        still = still + 1 if now == last else 0
        last = now
    return last


async def _lasting_incident(run: PipelineRun) -> tuple[str, str]:
    """A firing threshold incident's id and device, once there is one: with the long resolve_after it
    stays open for the whole test (an offline one ends when its device comes back, a few seconds on)."""

    def read() -> tuple[str, str] | None:
        with db.connect(run.settings) as conn:
            row = conn.execute(
                "SELECT incident_id, device_id FROM incidents WHERE status = 'firing' AND kind = 'threshold'"
                " ORDER BY opened_at LIMIT 1"
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    for _ in range(LIVE_TIMEOUT_MS // 1000):
        found = await asyncio.to_thread(read)
        if found:
            return found
        await asyncio.sleep(1)
    pytest.fail("no threshold incident in the database: the pipeline, not the console, failed")


async def test_the_console_in_a_browser_shows_the_pipeline_live_and_acts_on_it(
    endpoints: Endpoints, browser_page: BrowserPage
) -> None:
    run = PipelineRun.isolated(
        endpoints.settings(), ROOT / ".thermoflow" / "e2e" / "console", resolve_after=RESOLVE_AFTER_S
    )
    page = browser_page.page
    fleet: asyncio.Task[dict[str, Any]] | None = None
    try:
        await run.start("--exit-with-parent")
        async with _console(run) as url:
            fleet = asyncio.create_task(run.simulate(*FLEET, measure=False))
            await _steps(run, page, browser_page, url)
    finally:
        if fleet is not None and not fleet.done():
            fleet.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await fleet
        await run.stop()
        run.drop_schema()
    assert browser_page.errors == [], "the console's scripts failed in the browser"


async def _open_total(page: Page) -> int:
    """Open incidents, critical and warning, as the overview shows them now (0 before the first sample)."""
    texts = [await page.locator(selector).inner_text() for selector in OPEN]
    return sum(int(t.replace(",", "")) for t in texts if t.strip().replace(",", "").isdigit())


async def _steps(run: PipelineRun, page: Page, shots: BrowserPage, url: str) -> None:
    # A wrong password logs nobody in and says so.
    await page.goto(url + LOGIN)
    await page.fill(LOGIN_USER, OPERATOR)
    await page.fill(LOGIN_PASSWORD, "not-the-token")
    await page.click(LOGIN_SUBMIT)
    await page.locator(LOGIN_ERROR).wait_for()
    await shots.screenshot("login-refused")
    # The browser logs the refusal's 401 as a failed load: expected here, and no script's fault.
    shots.errors[:] = [e for e in shots.errors if "status of 401" not in e]
    # The demo's login: any name, the shared token.
    await page.fill(LOGIN_USER, OPERATOR)
    await page.fill(LOGIN_PASSWORD, TOKEN)
    await page.click(LOGIN_SUBMIT)
    assert await page.locator(USER).inner_text() == OPERATOR

    # Overview: the figures come over Server-Sent Events; an incident appears without a reload.
    await page.goto(url + OVERVIEW)
    await page.evaluate("window.__not_reloaded = true")
    await page.wait_for_function(
        f"!document.querySelector('{UPDATED}').textContent.startsWith('waiting')", timeout=LIVE_TIMEOUT_MS
    )
    first = await _open_total(page)

    async def more_open() -> bool:
        return await _open_total(page) > first

    await _until(more_open, f"an incident appearing live on the overview (open at first: {first})")
    assert await page.evaluate("window.__not_reloaded === true"), "the overview changed by reloading"
    await page.wait_for_function(
        " && ".join(f"/[0-9]/.test(document.querySelector('{rate}').textContent)" for rate in RATES)
    )
    await page.locator("#lag tr").first.wait_for()
    overview = await shots.screenshot("overview")
    if os.environ.get(README_SHOT_VAR):
        shutil.copyfile(overview, ROOT / "docs" / "console.png")

    # Incidents: the list, then one that stays firing (a threshold one: offline ones end when the
    # device is back), acknowledged in its page with a note by a double click.
    incident_id, device_id = await _lasting_incident(run)
    await page.goto(url + INCIDENTS + "?status=open")
    await page.locator(f"a[href='{INCIDENT.format(quote(incident_id, safe=''))}']").click()
    await page.locator(STATUS).wait_for()
    assert await page.locator(STATUS).inner_text() == "firing"
    await shots.screenshot("incident-firing")
    seen_before = len(run.receiver.deliveries)
    note = "e2e: on my way <b>now</b>"
    await page.fill(ACK_NOTE, note)
    # Chromium sends a double click on a submit button as one POST, so the second one is sent
    # alongside, with this session's cookie and the form's own fields: two acknowledgements at once.
    form = page.locator(ACK_FORM)
    action = await form.get_attribute("action")
    fields: dict[str, str | float | bool] = {
        name: await form.locator(f"input[name={name}]").input_value() for name in ("csrf", "note")
    }
    _, second = await asyncio.gather(
        page.locator(ACK_BUTTON).dblclick(), page.request.post(url + str(action), form=fields)
    )
    assert second.ok, second.status
    await page.wait_for_function(f"document.querySelector('{STATUS}')?.textContent === 'acknowledged'")
    timeline = await page.locator(TIMELINE).inner_text()
    assert "acknowledged" in timeline and OPERATOR in timeline and note in timeline, timeline
    status, by, stored_note = await asyncio.to_thread(_acknowledgement, run, incident_id)
    assert (status, by, stored_note) == ("acknowledged", OPERATOR, note)

    async def acks() -> int:
        return sum(
            1 for d in run.receiver.deliveries[seen_before:]
            if isinstance(d.json, dict) and d.json.get("incident_id") == incident_id
            and d.json.get("transition") == ACKNOWLEDGED
        )  # fmt: skip

    await _until(acks, f"the notifier's {ACKNOWLEDGED!r} notification of {incident_id}")
    assert await _settle(acks) == 1, "a double click must be one acknowledgement, notified once"
    await page.reload()
    await page.locator(NOTIFICATIONS).wait_for()
    await shots.screenshot("incident-acknowledged")

    # Device: the chart drew the device's readings and marked its alerts.
    await page.goto(url + DEVICE.format(quote(device_id, safe="")))
    await page.wait_for_function(f"{CHART} !== undefined")
    drawn = await page.evaluate(
        f"[{CHART}.data[2].filter(v => v !== null).length, {CHART}.data[4].filter(v => v !== null).length]"
    )
    assert drawn[0] > 0, "the chart drew no readings"
    assert drawn[1] > 0, "the chart marked none of the device's alerts"
    await shots.screenshot("device")

    # Dead letters: the fleet's malformed payload, redriven, is judged again by the bridge and
    # comes back as one new dead letter.
    async def letters() -> int:
        await page.goto(url + DEADLETTERS)
        return await page.locator(f"{LETTER_ROWS}:has({REDRIVE_BUTTON})").count()

    await _until(letters, "the fleet's malformed payload on the dead-letter page")
    rows_before = await page.locator(LETTER_ROWS).count()
    topic = run.settings.deadletter_topic
    async with kafka_observer(run.settings) as observer:
        before = await observer.baseline([topic])

        async def again() -> int:
            return (await observer.end_offsets([topic], since=before))[topic]

        await page.locator(f"{LETTER_ROWS}:has({REDRIVE_BUTTON})").first.locator(REDRIVE_BUTTON).click()
        await page.get_by_text("sent 1 back to the bridge").wait_for()
        await _until(again, "the redriven payload coming back from the bridge")
        assert await _settle(again) == 1, "a redriven payload must come back once"

    async def shown() -> bool:
        await page.goto(url + DEADLETTERS)
        return await page.locator(LETTER_ROWS).count() > rows_before

    await _until(shown, "the redriven payload's new dead letter on the page")
    assert await page.locator(f"{LETTER_ROWS} .redriven").count() == 1
    await shots.screenshot("deadletters")

    # Incidents list and rules: the rules in force and the last reload's outcome.
    await page.goto(url + INCIDENTS)
    await shots.screenshot("incidents")
    await page.goto(url + RULES)
    await page.wait_for_function("document.body.innerText.match(/rule/i) !== null")
    await shots.screenshot("rules")
