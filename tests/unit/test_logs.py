"""Logging: one JSON object per line (or readable console lines), secrets cut from everything."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from uploader_daemon.logs import configure_logging, get_logger
from uploader_daemon.redaction import REDACTED, Redactor, redact_structure, scrub_text

SECRET = "hunter2-Very-Secret"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1cGxvYWRlciJ9.c2lnbmF0dXJlLXBhcnQ"


@pytest.fixture(autouse=True)
def _stop_capturing_warnings() -> Iterator[None]:
    """configure_logging routes warnings into logging; undo it after each test."""
    yield
    logging.captureWarnings(False)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def configured(
    level: str = "info", log_format: str = "json", secrets: tuple[str, ...] = (SECRET,)
) -> io.StringIO:
    """Logging configured as the CLI does it, writing into a buffer."""
    stream = io.StringIO()
    configure_logging(level, log_format, Redactor(secrets), stream=stream)
    return stream


# --- output format ---------------------------------------------------------------------


def test_own_events_are_json_lines_with_timestamp_level_and_event_first() -> None:
    """journald gets one object per line; a person scanning it sees when, how bad and what first."""
    stream = configured()
    get_logger("uploader_daemon.workers").info("upload_finished", file="a.csv", target="reports", attempt=2)
    (line,) = json_lines(stream)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert (line["level"], line["event"], line["file"], line["target"], line["attempt"]) == (
        "info",
        "upload_finished",
        "a.csv",
        "reports",
        2,
    )
    assert line["timestamp"].endswith("Z")
    assert "logger" not in line


def test_library_warnings_go_through_the_same_chain_with_their_logger_name() -> None:
    """httpx and apscheduler lines look like ours, plus the logger that wrote them."""
    stream = configured()
    logging.getLogger("httpx").warning("connection pool is full, discarding %s", "conn-1")
    logging.getLogger("apscheduler").warning("Run time of job was missed")
    first, second = json_lines(stream)
    assert list(first)[:3] == ["timestamp", "level", "event"]
    assert (first["level"], first["event"], first["logger"]) == (
        "warning",
        "connection pool is full, discarding conn-1",
        "httpx",
    )
    assert (second["event"], second["logger"]) == ("Run time of job was missed", "apscheduler")


def test_library_info_lines_are_silenced_unless_debugging() -> None:
    """A line per scheduler tick or file event is noise at info, useful at debug."""
    stream = configured("info")
    logging.getLogger("apscheduler").info("Running job")
    logging.getLogger("watchdog.observers").debug("inotify event")
    assert stream.getvalue() == ""

    stream = configured("debug")
    logging.getLogger("apscheduler").info("Running job")
    logging.getLogger("watchdog.observers").debug("inotify event")
    assert [line["logger"] for line in json_lines(stream)] == ["apscheduler", "watchdog.observers"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("httpx", 'HTTP Request: GET https://b.s3.test/k?X-Amz-Signature=0123abcd "HTTP/1.1 200 OK"'),
        ("httpcore.http11", "send_request_headers.started"),
        ("botocore.parsers", 'Response body: b\'{"AuthenticationResult": {"RefreshToken": "947a2c61"}}\''),
        ("boto3.resources", "Calling cognito-idp:initiate_auth"),
        ("urllib3.connectionpool", 'http://127.0.0.1:5000 "POST / HTTP/1.1" 200 4011'),
    ],
)
def test_libraries_that_echo_urls_and_bodies_stay_at_warning_even_when_debugging(
    name: str, message: str
) -> None:
    """Their debug lines print secrets the redactor may not know yet; their warnings still show."""
    stream = configured("debug")
    library = logging.getLogger(name)
    library.debug(message)
    library.info(message)
    library.warning("connection pool is full")
    assert [(name, "connection pool is full")] == [
        (line["logger"], line["event"]) for line in json_lines(stream)
    ]


def test_events_below_the_configured_level_are_dropped() -> None:
    """At warning, info and debug events do not appear."""
    stream = configured("warning")
    log = get_logger("uploader_daemon.x")
    log.debug("detail")
    log.info("routine")
    log.warning("odd")
    assert [line["event"] for line in json_lines(stream)] == ["odd"]


def test_the_console_format_is_readable_text() -> None:
    """For a person at a terminal: level, event and key=value pairs, no JSON braces."""
    stream = configured(log_format="console")
    get_logger("uploader_daemon.x").warning("upload_failed", file="a.csv", password=SECRET)
    text = stream.getvalue()
    assert "warning" in text
    assert "upload_failed" in text
    assert "file=a.csv" in text
    assert f"password={REDACTED}" in text
    assert SECRET not in text
    assert not text.startswith("{")
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


def test_auto_format_writes_json_when_not_on_a_terminal() -> None:
    """Under systemd stdout is not a TTY, so auto means JSON."""
    stream = configured(log_format="auto")
    get_logger("uploader_daemon.x").info("started")
    assert json_lines(stream)[0]["event"] == "started"


def test_configuring_twice_leaves_one_handler() -> None:
    """Reconfiguring (tests, the demo) does not duplicate every line."""
    configured()
    stream = configured()
    get_logger("uploader_daemon.x").info("once")
    assert len(json_lines(stream)) == 1
    assert len(logging.getLogger().handlers) == 1


# --- the redactor ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "Authorization",
        "proxy-authorization",
        "app-key",
        "App-Key",
        "user-token",
        "USER_TOKEN",
        "client_secret",
        "X-Amz-Signature",
        "cookie",
        "Set-Cookie",
        "api_key",
        "X-API-Key",
        "db_password",
        "session_token",
        "credentials",
    ],
)
def test_values_under_secret_looking_keys_are_blanked(key: str) -> None:
    """Key names are compared without case, with - and _ alike."""
    stream = configured(secrets=())
    get_logger("uploader_daemon.x").info("event", **{key: "plain-looking-value"})
    assert json_lines(stream)[0][key] == REDACTED


@pytest.mark.parametrize(
    "key",
    [
        "expires_at",
        "token_expires_at",
        "token_check",
        "token_field",
        "password_field",
        "expires_in",
        "file",
        "target",
        "upload_key",
        "status",
        "attempt",
        "step",
        "tokens_refreshed",
        "path",
        "url",
    ],
)
def test_harmless_keys_that_merely_mention_a_secret_survive(key: str) -> None:
    """Only keys that name a secret are blanked; the admin still sees expiry times and field names."""
    stream = configured(secrets=())
    get_logger("uploader_daemon.x").info("event", **{key: "visible"})
    assert json_lines(stream)[0][key] == "visible"


def test_an_absent_secret_is_shown_as_absent() -> None:
    """password=None says "no password", which is useful and not secret."""
    redactor = Redactor()
    assert redactor(None, "info", {"password": None, "token": ""}) == {"password": None, "token": ""}


def test_secret_keys_inside_nested_mappings_and_lists_are_blanked() -> None:
    """Headers logged as a mapping lose their credentials, wherever they sit."""
    redactor = Redactor()
    event = {
        "request": {"headers": {"Authorization": "Bearer abcdefgh", "Accept": "application/json"}},
        "attempts": [{"user-token": "u-1"}, {"app-key": "k-1", "step": "create"}],
    }
    assert redactor(None, "info", event) == {
        "request": {"headers": {"Authorization": REDACTED, "Accept": "application/json"}},
        "attempts": [{"user-token": REDACTED}, {"app-key": REDACTED, "step": "create"}],
    }


def test_registered_secret_values_are_cut_out_of_any_text() -> None:
    """A password inside an error message, a list, a tuple or bytes is replaced."""
    redactor = Redactor([SECRET])
    event = {
        "event": f"login failed for {SECRET}",
        "error": f"server said: {SECRET!r}",
        "details": {"body": [f"echo {SECRET}", (SECRET,)]},
        "raw": f"raw {SECRET}".encode(),
    }
    assert redactor(None, "info", event) == {
        "event": f"login failed for {REDACTED}",
        "error": f"server said: '{REDACTED}'",
        "details": {"body": [f"echo {REDACTED}", [REDACTED]]},
        "raw": f"raw {REDACTED}",
    }


def test_the_longest_overlapping_secret_is_cut_whole() -> None:
    """A token that contains a shorter secret leaves no tail behind."""
    redactor = Redactor(["abcdef", "abcdef-ghij-klmn-opqr"])
    assert redactor.scrub("x abcdef-ghij-klmn-opqr y abcdef") == f"x {REDACTED} y {REDACTED}"


def test_very_short_values_are_not_registered_as_secrets() -> None:
    """Blanking every "ab" in the logs would ruin them and protect nothing."""
    redactor = Redactor(["ab", "abcde", ""])
    assert redactor.scrub("a tab, a cab and abcde") == "a tab, a cab and abcde"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi_1", f"Authorization: Bearer {REDACTED}"),
        ("Authorization: Bearer ab_cdefghijklmnop", f"Authorization: Bearer {REDACTED}"),
        ("header bearer 0123456789abcdef", f"header bearer {REDACTED}"),
        ("Authorization: TOK:abcdefghijk", f"Authorization: TOK: {REDACTED}"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", f"Authorization: Basic {REDACTED}"),
        (f"token={JWT}&x=1", f"token={REDACTED}&x=1"),
        ("Bearer token expired", "Bearer token expired"),
        ("bearer_token_missing, basicAuthentication", "bearer_token_missing, basicAuthentication"),
        ("TOK: abcdefghijk", f"TOK: {REDACTED}"),
    ],
)
def test_credentials_in_free_text_are_cut_even_when_unregistered(text: str, expected: str) -> None:
    """Bearer/Basic/TOK: values and JWT-shaped strings never reach the log."""
    assert Redactor().scrub(text) == expected


def test_tracebacks_are_rendered_before_redaction() -> None:
    """A secret in an exception message is cut from log.exception's traceback, ours and stdlib's."""
    stream = configured()

    def log_in() -> None:
        raise RuntimeError(f"login refused for password {SECRET} with Bearer {JWT}")

    try:
        log_in()
    except RuntimeError:
        get_logger("uploader_daemon.auth").exception("login_failed")
        logging.getLogger("apscheduler").exception("job raised")
    ours, library = json_lines(stream)
    for line in (ours, library):
        assert "Traceback (most recent call last)" in line["exception"]
        assert "RuntimeError: login refused for password" in line["exception"]
    assert SECRET not in stream.getvalue()
    assert JWT not in stream.getvalue()


def test_stdlib_message_arguments_are_redacted() -> None:
    """A library that formats a secret into its message (%s) is scrubbed after formatting."""
    stream = configured()
    logging.getLogger("httpx").warning("retrying with %s and Authorization: Bearer %s", SECRET, "abcdefghij")
    assert json_lines(stream)[0]["event"] == f"retrying with {REDACTED} and Authorization: Bearer {REDACTED}"


def test_an_exception_object_passed_as_a_value_is_redacted() -> None:
    """error=exc (instead of str(exc)) would otherwise reach the renderer unscrubbed."""
    stream = configured()
    get_logger("uploader_daemon.x").warning("odd", error=ValueError(f"bad {SECRET}"))
    (line,) = json_lines(stream)
    assert line["error"] == f"ValueError('bad {REDACTED}')"


def test_paths_and_numbers_keep_their_plain_form() -> None:
    """A Path is logged as the path, numbers and booleans stay JSON numbers and booleans."""
    stream = configured()
    log = get_logger("uploader_daemon.x")
    log.info("scan", folder=Path("/srv/drop"), files=3, seconds=1.5, recursive=True)
    (line,) = json_lines(stream)
    assert (line["folder"], line["files"], line["seconds"], line["recursive"]) == ("/srv/drop", 3, 1.5, True)


def test_every_level_is_redacted() -> None:
    """Debug lines are as clean as errors."""
    stream = configured("debug")
    log = get_logger("uploader_daemon.x")
    for method in (log.debug, log.info, log.warning, log.error, log.critical):
        method("event", note=f"has {SECRET}")
    logging.getLogger("apscheduler").debug("job with %s", SECRET)
    assert len(json_lines(stream)) == 6
    assert SECRET not in stream.getvalue()


# --- text-level rules: quoted secret fields, secret query parameters ------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'Response body: b\'{"AuthenticationResult": {"AccessToken": "a-1", "ExpiresIn": 3600, '
            '"IdToken": "i-2", "RefreshToken": "947a2c61-aa", "TokenType": "Bearer"}}\'',
            f'Response body: b\'{{"AuthenticationResult": {{"AccessToken": "{REDACTED}", "ExpiresIn": 3600, '
            f'"IdToken": "{REDACTED}", "RefreshToken": "{REDACTED}", "TokenType": "Bearer"}}}}\'',
        ),
        (
            '{"access_token":"a-1","refresh_token":"r-2","id_token":"i-3","token_type":"bearer"}',
            f'{{"access_token":"{REDACTED}","refresh_token":"{REDACTED}","id_token":"{REDACTED}",'
            '"token_type":"bearer"}',
        ),
        ('{"token": "t-1", "user": "bob"}', f'{{"token": "{REDACTED}", "user": "bob"}}'),
        ('{"password": "hun\\"ter2", "user": "bob"}', f'{{"password": "{REDACTED}", "user": "bob"}}'),
        ('{"client_secret": "cs-1"}', f'{{"client_secret": "{REDACTED}"}}'),
        (
            "{'password': 'pw-1', 'client_secret': 'cs-1'}",
            f"{{'password': '{REDACTED}', 'client_secret': '{REDACTED}'}}",
        ),
        (
            "{'RefreshToken': 'r-1', 'ExpiresIn': 3600}",
            f"{{'RefreshToken': '{REDACTED}', 'ExpiresIn': 3600}}",
        ),
        ('error: "{\\"token\\": \\"t-1\\"}"', f'error: "{{\\"token\\": \\"{REDACTED}\\"}}"'),
        (
            '{"x-amz-signature": "abcd", "policy": "eyJleHA", "key": "video/a.mp4"}',
            f'{{"x-amz-signature": "{REDACTED}", "policy": "{REDACTED}", "key": "video/a.mp4"}}',
        ),
        (
            '{"user": "bob", "refresh_token": "cut-short-by-an-exc',
            f'{{"user": "bob", "refresh_token": "{REDACTED}',
        ),
    ],
)
def test_secret_fields_quoted_in_json_or_a_python_repr_lose_their_values(text: str, expected: str) -> None:
    """A response body a library prints keeps its keys; the token and password values go."""
    assert expected == Redactor().scrub(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "HTTP Request: GET https://b.s3.test/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIA%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z"
            '&X-Amz-Expires=300&X-Amz-Security-Token=FwoGZX&X-Amz-Signature=0123abcd "HTTP/1.1 200 OK"',
            "HTTP Request: GET https://b.s3.test/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={REDACTED}&X-Amz-Date=20240101T000000Z"
            f"&X-Amz-Expires=300&X-Amz-Security-Token={REDACTED}"
            f'&X-Amz-Signature={REDACTED} "HTTP/1.1 200 OK"',
        ),
        (
            "https://s3.test/b/k?AWSAccessKeyId=AKIA1&Expires=1700000000&Signature=zz%2Bq",
            f"https://s3.test/b/k?AWSAccessKeyId={REDACTED}&Expires=1700000000&Signature={REDACTED}",
        ),
        (
            "https://cdn.test/v.mp4?Policy=eyJTdGF0&Signature=abc~def&Key-Pair-Id=K1",
            f"https://cdn.test/v.mp4?Policy={REDACTED}&Signature={REDACTED}&Key-Pair-Id=K1",
        ),
        ("https://a.test/f?policy=p-1&x=1", f"https://a.test/f?policy={REDACTED}&x=1"),
        (
            "https://blob.test/c/f?sv=2020-08-04&sig=AbC%3D&token=t-1#part",
            f"https://blob.test/c/f?sv=2020-08-04&sig={REDACTED}&token={REDACTED}#part",
        ),
        ("'https://a.test/cb?access_token=at-1'", f"'https://a.test/cb?access_token={REDACTED}'"),
    ],
)
def test_secret_query_parameters_in_urls_lose_their_values(text: str, expected: str) -> None:
    """Presigned URLs keep their host, path and harmless parameters; signatures and tokens go."""
    assert expected == Redactor().scrub(text)


@pytest.mark.parametrize(
    "text",
    [
        "upload_finished",
        "/srv/drop/reports/2024-01-01.csv",
        "step create: the server answered 503 Service Unavailable",
        "the token expired; refresh it with refresh_token_auth",
        '{"token_type": "Bearer", "expires_in": 3600, "password_field": "pw"}',
        "{'tokens_refreshed': 2, 'token_expires_at': '2024-01-01'}",
        "https://api.test/v1/items?page=2&user_token_hint=none&signature_version=4",
        "config=/etc/uploader.yaml retry=3 design=final",
        'https://s3.test/b/k?X-Amz-Date=20240101T000000Z&X-Amz-Expires=300 "HTTP/1.1 200 OK"',
    ],
)
def test_harmless_text_about_tokens_and_urls_survives_the_text_rules(text: str) -> None:
    """Field names, expiry times and ordinary query parameters are what an admin needs to see."""
    assert text == Redactor().scrub(text)


def test_scrub_text_applies_the_rules_without_any_registered_secret() -> None:
    """For error messages built from response text, where no Redactor is at hand."""
    text = f'answered 400: {{"token": "t-1"}} Authorization: Bearer abcdefgh {JWT} https://s/k?X-Amz-Signature=ab'
    expected = (
        f'answered 400: {{"token": "{REDACTED}"}} Authorization: Bearer {REDACTED} {REDACTED} '
        f"https://s/k?X-Amz-Signature={REDACTED}"
    )
    assert expected == scrub_text(text)


def test_a_library_debug_line_quoting_a_token_response_is_redacted_if_it_gets_through() -> None:
    """A library not on the quiet list that prints Cognito's answer still loses the tokens."""
    stream = configured("debug")
    logging.getLogger("pycognito").debug('answer: {"RefreshToken": "947a2c61-1234", "IdToken": "i-1"}')
    (line,) = json_lines(stream)
    assert f'answer: {{"RefreshToken": "{REDACTED}", "IdToken": "{REDACTED}"}}' == line["event"]
    assert "947a2c61-1234" not in stream.getvalue()


# --- redact_structure ------------------------------------------------------------------


def test_redact_structure_blanks_presigned_fields_and_tokens_at_any_depth() -> None:
    """A presigned grant keeps its URL, object key and dates; signature, policy and credential go."""
    grant = {
        "url": "https://bucket.s3.test/",
        "fields": {
            "key": "video/a.mp4",
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": "AKIA/20240101/us-east-1/s3/aws4_request",
            "x-amz-date": "20240101T000000Z",
            "x-amz-security-token": "FwoG",
            "policy": "eyJleHBpcmF0aW9uIjo",
            "x-amz-signature": "0123abcd",
        },
        "sigv2": [{"AWSAccessKeyId": "AKIA", "Signature": "zz", "Policy": "eyJ"}],
        "session": {"RefreshToken": "r-1", "AccessToken": "a-1", "expires_in": 300},
        "absent": {"token": None, "password": ""},
    }
    assert {
        "url": "https://bucket.s3.test/",
        "fields": {
            "key": "video/a.mp4",
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": REDACTED,
            "x-amz-date": "20240101T000000Z",
            "x-amz-security-token": REDACTED,
            "policy": REDACTED,
            "x-amz-signature": REDACTED,
        },
        "sigv2": [{"AWSAccessKeyId": REDACTED, "Signature": REDACTED, "Policy": REDACTED}],
        "session": {"RefreshToken": REDACTED, "AccessToken": REDACTED, "expires_in": 300},
        "absent": {"token": None, "password": ""},
    } == redact_structure(grant)


def test_redact_structure_leaves_scalars_and_the_original_alone() -> None:
    """Plain values come back as they are, and the caller's data is not modified."""
    original = {"token": "t-1", "items": [1, "two", None]}
    assert {"token": REDACTED, "items": [1, "two", None]} == redact_structure(original)
    assert {"token": "t-1", "items": [1, "two", None]} == original
    assert "text" == redact_structure("text")
    assert 3 == redact_structure(3)
    assert ("a", {"policy": REDACTED}) == redact_structure(("a", {"policy": "p"}))


def test_only_each_credentials_most_recent_tokens_are_kept_for_scrubbing() -> None:
    """Months of refreshes do not grow the redactor; one target's renewals never evict another's."""
    redactor = Redactor(["the-password"])
    redactor.add_token("target-b-token-0001", "b")
    redactor.add_token("refresh-token-of-a", "a/refresh")
    for number in range(40):
        redactor.add_token(f"token-number-{number:04}", "a")
    assert REDACTED == redactor.scrub("the-password")
    assert REDACTED == redactor.scrub("token-number-0039")
    assert REDACTED == redactor.scrub("target-b-token-0001")
    assert REDACTED == redactor.scrub("refresh-token-of-a")
    assert "token-number-0000" == redactor.scrub("token-number-0000")


def test_a_word_like_password_is_cut_only_where_it_stands_alone() -> None:
    """A short password inside a path or a name is left alone: cutting it would point at it."""
    redactor = Redactor(["uploader"])
    assert "/srv/drop/uploader-exports and sudo -u uploader-daemon" == redactor.scrub(
        "/srv/drop/uploader-exports and sudo -u uploader-daemon"
    )
    assert f'{{"password": "{REDACTED}"}} and user={REDACTED}&x' == redactor.scrub(
        '{"password": "uploader"} and user=uploader&x'
    )


def test_prose_after_basic_or_bearer_is_not_taken_for_a_credential() -> None:
    """ "Basic authentication required" stays readable; real credentials after it do not."""
    assert "Basic authentication required" == Redactor().scrub("Basic authentication required")
    assert f"Basic {REDACTED}" == Redactor().scrub("Basic dXNlcjpwYXNzd29yZA==")
