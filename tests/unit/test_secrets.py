"""Secrets: where they come from, and that they never show themselves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from uploader_daemon.config import parse_config
from uploader_daemon.secrets import Secret, resolve_secret, secret_values

VALUE = "p4ss-W0rd-value"


def test_a_literal_string_is_the_secret() -> None:
    """A plain string in the config is used as written."""
    assert resolve_secret(VALUE, {}) == Secret(VALUE, "literal")


def test_an_environment_variable_is_read_from_the_given_environment() -> None:
    """{env: NAME} reads the mapping passed in, not the process environment."""
    secret = resolve_secret({"env": "PW"}, {"PW": VALUE})
    assert (secret.value, secret.source) == (VALUE, "env PW")


@pytest.mark.parametrize(
    ("environ", "message"),
    [({}, "environment variable PW is not set"), ({"PW": ""}, "environment variable PW is empty")],
)
def test_an_unset_or_empty_environment_variable_is_refused(environ: dict[str, str], message: str) -> None:
    """A missing variable is an admin error, never an empty password."""
    with pytest.raises(ValueError, match=message):
        resolve_secret({"env": "PW"}, environ)


def test_a_secret_file_is_read_without_one_trailing_newline(tmp_path: Path) -> None:
    """Editors and echo add a newline (or CRLF); it is not part of the secret."""
    for ending in ("\n", "\r\n", ""):
        path = tmp_path / f"pw{len(ending)}"
        path.write_bytes((VALUE + ending).encode())
        secret = resolve_secret({"file": str(path)}, {})
        assert (secret.value, secret.source) == (VALUE, f"file {path}")


def test_only_one_trailing_newline_is_stripped_and_inner_whitespace_is_kept(tmp_path: Path) -> None:
    """A secret may legitimately contain spaces; only the editor's newline goes."""
    path = tmp_path / "pw"
    path.write_text(" a b \n\n", encoding="utf-8")
    assert resolve_secret({"file": str(path)}, {}).value == " a b \n"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("", "is empty"), ("\n", "is empty"), (b"\xff\xfe", "is not UTF-8 text")],
)
def test_an_unusable_secret_file_is_refused(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    """Missing, empty and binary secret files each get their own sentence."""
    path = tmp_path / "pw"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=f"secret file {path} {message}"):
        resolve_secret({"file": str(path)}, {})


def test_a_directory_as_secret_file_is_refused(tmp_path: Path) -> None:
    """A path to a folder is named as such."""
    with pytest.raises(ValueError, match=f"secret file {tmp_path} is a directory"):
        resolve_secret({"file": str(tmp_path)}, {})


def test_a_systemd_credential_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    """{credential: NAME} reads $CREDENTIALS_DIRECTORY/NAME (LoadCredential=)."""
    (tmp_path / "api_password").write_text(VALUE + "\n", encoding="utf-8")
    secret = resolve_secret({"credential": "api_password"}, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert (secret.value, secret.source) == (VALUE, "credential api_password")


def test_a_credential_outside_systemd_explains_the_alternatives() -> None:
    """Without $CREDENTIALS_DIRECTORY the message says how to provide it or what to use instead."""
    with pytest.raises(ValueError, match=r"needs \$CREDENTIALS_DIRECTORY.*LoadCredential=pw:/path"):
        resolve_secret({"credential": "pw"}, {})
    with pytest.raises(ValueError, match="needs"):
        resolve_secret({"credential": "pw"}, {"CREDENTIALS_DIRECTORY": ""})


@pytest.mark.parametrize("name", ["../etc/shadow", "a/b", ".", ".."])
def test_a_credential_name_cannot_escape_the_credentials_directory(tmp_path: Path, name: str) -> None:
    """A credential is a plain name inside the directory systemd made."""
    with pytest.raises(ValueError, match="must be a plain name, not a path"):
        resolve_secret({"credential": name}, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "is empty"),
        ({"bogus": "X"}, "unknown secret source 'bogus'; use env, file or credential"),
        ({"env": "A", "file": "/b"}, "must be a string, or exactly one of"),
        ({}, "must be a string, or exactly one of"),
        (12345, "must be a string, or exactly one of"),
        (["a"], "must be a string, or exactly one of"),
        (None, "must be a string, or exactly one of"),
        ({"env": ""}, r"\{env: \.\.\.\} needs a non-empty name"),
        ({"file": 3}, r"\{file: \.\.\.\} needs a non-empty name"),
    ],
)
def test_a_malformed_secret_is_refused(raw: object, message: str) -> None:
    """Only a non-empty string or one source mapping is a secret."""
    with pytest.raises(ValueError, match=message):
        resolve_secret(raw, {})


def test_a_secret_never_shows_its_value() -> None:
    """repr, str, f-strings and containers show where it came from, not what it is."""
    secret = Secret(VALUE, "env PW")
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret]), repr({"pw": secret})]
    assert all(VALUE not in text for text in shown)
    assert str(secret) == "Secret(from env PW)"


def test_a_resolved_secret_never_shows_in_the_config_repr(tmp_path: Path) -> None:
    """Printing the parsed config (a debugging habit) does not print the password."""
    (tmp_path / "drop").mkdir()
    config = parse_config(_config(tmp_path), "test", {"PW": VALUE})
    assert VALUE not in repr(config)
    assert VALUE not in str(config)


def _config(root: Path) -> str:
    return textwrap.dedent(f"""\
        state_dir: {root}/state
        targets:
          - name: token
            folder: {root}/drop
            failed_dir: {root}/failed-token
            after_upload: {{action: keep}}
            api: {{base_url: "https://api.example.com"}}
            auth:
              type: token
              login: {{username: u, password: {{env: PW}}}}
            upload: {{type: multipart}}
    """)


def test_secret_values_finds_every_secret_in_a_parsed_config(tmp_path: Path) -> None:
    """Token passwords, static header values and Cognito secrets all reach the log redactor."""
    for name in ("token", "headers", "cognito", "none"):
        (tmp_path / name).mkdir()
    (tmp_path / "app-key").write_text("app-key-from-file\n", encoding="utf-8")
    text = textwrap.dedent(f"""\
        state_dir: {tmp_path}/state
        targets:
          - name: token
            folder: {tmp_path}/token
            failed_dir: {tmp_path}/failed-token
            after_upload: {{action: keep}}
            api: {{base_url: "https://api.example.com"}}
            auth:
              type: token
              login: {{username: u, password: {{env: PW}}}}
            upload: {{type: multipart}}
          - name: headers
            folder: {tmp_path}/headers
            failed_dir: {tmp_path}/failed-headers
            after_upload: {{action: keep}}
            api: {{base_url: "https://runrun.it/api/v1.0"}}
            auth:
              type: headers
              headers: {{app-key: {{file: {tmp_path}/app-key}}, user-token: literal-user-token}}
            upload: {{type: multipart}}
          - name: cognito
            folder: {tmp_path}/cognito
            failed_dir: {tmp_path}/failed-cognito
            after_upload: {{action: keep}}
            api: {{base_url: "https://gw.example.com"}}
            auth:
              type: cognito
              region: eu-west-1
              user_pool_id: eu-west-1_AbC123
              client_id: client
              client_secret: {{env: CLIENT_SECRET}}
              username: u
              password: cognito-password
            upload: {{type: gateway_presigned, path: /upload, folder: video}}
          - name: none
            folder: {tmp_path}/none
            failed_dir: {tmp_path}/failed-none
            after_upload: {{action: keep}}
            api: {{base_url: "https://open.example.com"}}
            auth: {{type: none}}
            upload: {{type: multipart}}
    """)
    config = parse_config(text, "test", {"PW": VALUE, "CLIENT_SECRET": "cognito-client-secret"})
    assert sorted(secret_values(config)) == sorted(
        [
            VALUE,
            "app-key-from-file",
            "literal-user-token",
            "cognito-client-secret",
            "cognito-password",
        ]
    )


def test_secret_values_skips_unresolved_secrets(tmp_path: Path) -> None:
    """With resolve_secrets=False the placeholders are empty and nothing is registered."""
    (tmp_path / "drop").mkdir()
    config = parse_config(_config(tmp_path), "test", {}, resolve_secrets=False)
    assert secret_values(config) == []


def test_secret_values_walks_plain_containers() -> None:
    """Mappings, lists and tuples nest secrets too; other values are ignored."""
    nested = {"a": [Secret("one-1"), ("x", Secret("two-2"))], "b": {"c": Secret("three-3")}, "d": 5}
    assert sorted(secret_values(nested)) == ["one-1", "three-3", "two-2"]
