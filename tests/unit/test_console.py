"""The console's pure parts: logins, sessions, parameters, the overview's arithmetic, escaping."""

from __future__ import annotations

from pathlib import Path

import pytest

from thermoflow.console import params
from thermoflow.console.auth import (
    Credentials,
    Sessions,
    UsersFileError,
    hash_password,
    load_users,
    parse_users,
)
from thermoflow.console.context import templates
from thermoflow.console.overview import Counts, rates
from thermoflow.console.settings import ConsoleSettings


def test_users_file_logins(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"# operators\nana:{hash_password('correct horse')}\n\nbo:{hash_password('battery')}\n")
    credentials = Credentials(users=load_users(users))
    assert credentials.check("ana", "correct horse") == "ana"
    assert credentials.check("ana", "battery") is None  # bo's password is not ana's
    assert credentials.check("bo", "battery") == "bo"
    assert credentials.check("eve", "correct horse") is None
    assert credentials.check("ana", "") is None
    assert credentials.check("ana\n", "correct horse") is None


def test_token_logs_in_any_valid_name_but_not_over_a_users_password() -> None:
    credentials = Credentials(users={"ana": hash_password("pw")}, token="t0ken")
    assert credentials.check("night-shift", "t0ken") == "night-shift"
    assert credentials.check("night-shift", "t0ke") is None
    assert credentials.check("ana", "t0ken") is None  # a user in the file logs in with their own password
    assert credentials.check("<script>", "t0ken") is None  # the name is recorded: letters only
    assert not Credentials(users={}).any


@pytest.mark.parametrize("line", ["ana", "ana:plain-text", "a b:$argon2id$x", ":$argon2id$x"])
def test_bad_users_file_names_the_line(line: str) -> None:
    with pytest.raises(UsersFileError, match=r"users:2"):
        parse_users(f"# header\n{line}\n", source="users")


def test_sessions_expire_and_login_rotates_the_id_and_csrf() -> None:
    now = [0.0]
    sessions = Sessions(lifetime=60.0, clock=lambda: now[0])
    anonymous = sessions.new()
    logged_in = sessions.login(anonymous, "ana")
    assert logged_in.session_id != anonymous.session_id and logged_in.csrf != anonymous.csrf
    assert sessions.get(anonymous.session_id) is None  # fixation: the pre-login id is gone
    assert sessions.get(logged_in.session_id) is logged_in
    assert logged_in.csrf_ok(logged_in.csrf) and not logged_in.csrf_ok(anonymous.csrf)
    assert not logged_in.csrf_ok(None)
    now[0] = 61.0
    assert sessions.get(logged_in.session_id) is None


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"limit": "1e9"}, "limit must be a whole number"),
        ({"limit": "٣"}, "limit must be a whole number"),  # an Arabic-Indic digit: isdigit() says yes
        ({"limit": "0"}, "limit must be a whole number"),
        ({"limit": "1" * 40}, "limit must be a whole number"),
    ],
)
def test_integer_refuses_what_int_would_take_or_choke_on(query: dict[str, str], problem: str) -> None:
    with pytest.raises(params.ParamError, match=problem):
        params.integer(query, "limit", default=100, low=1, high=1000)


def test_letter_refs() -> None:
    assert params.letter_ref("0:0") == (0, 0)
    for bad in ("0", "a:1", "1:-1", "1:2:3", "9" * 7 + ":1", "1:" + "9" * 30):
        with pytest.raises(params.ParamError):
            params.letter_ref(bad)


def test_notes_keep_newlines_but_no_other_control_characters() -> None:
    assert params.text({"note": "line 1\nline 2"}, "note", allow_newlines=True) == "line 1\nline 2"
    with pytest.raises(params.ParamError, match=r"U\+0007"):
        params.text({"note": "bell\a"}, "note", allow_newlines=True)


def test_rates_count_from_the_first_sample_and_never_go_negative() -> None:
    first = Counts(at=0.0, kafka=99_865, deadletters=10, stored=34_214)
    previous = Counts(at=59.0, kafka=100_000, deadletters=12, stored=99_000)
    now = Counts(at=60.0, kafka=100_100, deadletters=13, stored=98_000, lag={"sink": 5})  # a reset group
    figures = rates(first, previous, now, first, ingest_deadletters=0.5)
    assert figures["since_start"] == {"kafka": 235, "stored": 63_786, "deadletters": 3}
    assert figures["per_second"] == {"mqtt_in": 100.5, "kafka": 100.0, "stored": 0.0}
    assert figures["deadletters_per_minute"] == 3.0
    assert figures["lag"] == {"sink": 5}


def test_reading_is_open_only_on_loopback_unless_set() -> None:
    assert ConsoleSettings(console_host="127.0.0.1").read_open
    assert not ConsoleSettings(console_host="0.0.0.0").read_open
    assert not ConsoleSettings(console_host="console.example").read_open
    assert ConsoleSettings(console_host="0.0.0.0", console_read_open=True).read_open
    assert not ConsoleSettings(console_host="127.0.0.1", console_read_open=False).read_open


def test_every_template_escapes_by_default() -> None:
    env = templates()
    page = env.from_string("{{ value }} <pre>{{ payload }}</pre>").render(
        value="<script>alert(1)</script>", payload='"><img src=x onerror=alert(1)>'
    )
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "&#34;&gt;&lt;img" in page


def test_hash_password_prints_a_line_for_the_users_file() -> None:
    from typer.testing import CliRunner

    from thermoflow.cli import app, register_components

    register_components()
    result = CliRunner().invoke(app, ["console", "--hash-password"], input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.output
    hashed = result.output.strip().splitlines()[-1]
    assert Credentials(users=parse_users(f"ana:{hashed}")).check("ana", "s3cret") == "ana"


def test_a_flood_of_anonymous_visits_does_not_log_an_operator_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("thermoflow.console.auth.MAX_SESSIONS", 10)
    sessions = Sessions(lifetime=60.0)
    operator = sessions.login(sessions.new(), "ana")
    first = sessions.new()
    for _ in range(50):
        sessions.new()
    assert sessions.get(operator.session_id) is operator
    assert sessions.get(first.session_id) is None  # the oldest anonymous ones went


def test_the_configuration_reference_shows_the_consoles_real_flags() -> None:
    # docs/configuration.md listed `--console-host` and such; `thermoflow console` has `--host`.
    import typer.main

    from thermoflow.cli import app, register_components
    from thermoflow.configref import FLAGS, render

    register_components()
    command = typer.main.get_command(app).commands["console"]  # type: ignore[attr-defined]
    real = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    flags = FLAGS["thermoflow.console.settings"]
    assert all(part in real for flag in flags.values() for part in flag.split("/")), (flags, real)
    section = render().split("## operator console", 1)[1]
    assert "| `THERMOFLOW_CONSOLE_PORT` | `--port` |" in section
    assert "| `THERMOFLOW_CONSOLE_TOKEN` |  |" in section  # environment only: no flag
    assert "--console-" not in section
