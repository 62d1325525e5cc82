"""The config file: the example parses as written, and every mistake is one clear line."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml

from uploader_daemon.config import Config, default_config_path, load_config, parse_config
from uploader_daemon.config.auth import CognitoAuth, HeadersAuth, TokenAuth
from uploader_daemon.config.types import parse_duration
from uploader_daemon.config.upload import (
    DownloadStep,
    MultipartStep,
    PollStep,
    RequestStep,
    StoragePostStep,
    check_step_list,
)
from uploader_daemon.errors import ConfigError

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE = REPOSITORY / "config" / "example.yaml"
EXAMPLES = sorted((REPOSITORY / "config" / "examples").glob("*.yaml"))
PASSWORD = "hunter2-Very-Secret"


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """A drop folder that exists, and the folders the daemon would create."""
    paths = {name: tmp_path / name for name in ("drop", "other", "sent", "failed", "state", "out", "creds")}
    paths["drop"].mkdir()
    paths["other"].mkdir()
    paths["creds"].mkdir()
    return paths


def parse(text: str, places: Mapping[str, Path], environ: Mapping[str, str] | None = None) -> Config:
    """Parse inline YAML; ``$drop``, ``$failed``, ... name the test's folders."""
    filled = Template(textwrap.dedent(text)).substitute({name: str(path) for name, path in places.items()})
    return parse_config(filled, "test.yaml", dict(environ or {}))


def problems(
    text: str, places: Mapping[str, Path], environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The problems a refused config reports (fails the test when it is accepted)."""
    with pytest.raises(ConfigError) as caught:
        parse(text, places, environ)
    assert caught.value.exit_code == 2
    return caught.value.problems


def one_problem(text: str, places: Mapping[str, Path], environ: Mapping[str, str] | None = None) -> str:
    found = problems(text, places, environ)
    assert len(found) == 1, found
    return found[0]


# A valid target; tests copy it and change the part they are about.
VALID = """
    state_dir: $state
    targets:
      - name: reports
        folder: $drop
        failed_dir: $failed
        after_upload: {action: archive, archive_dir: $sent}
        api: {base_url: "https://api.example.com"}
        auth:
          type: token
          login: {username: uploader, password: hunter2-Very-Secret}
        upload: {type: multipart}
"""


def with_target_lines(*lines: str, upload: str = "{type: multipart}", auth: str | None = None) -> str:
    """VALID with extra target keys (and another upload or auth section)."""
    auth_text = auth or "\n".join(
        [
            "auth:",
            "  type: token",
            "  login: {username: uploader, password: hunter2-Very-Secret}",
        ]
    )
    body = [
        "name: reports",
        "folder: $drop",
        "failed_dir: $failed",
        "after_upload: {action: archive, archive_dir: $sent}",
        'api: {base_url: "https://api.example.com"}',
        *auth_text.splitlines(),
        *lines,
        f"upload: {upload}" if "\n" not in upload else "upload:",
    ]
    if "\n" in upload:
        body += ["  " + line for line in textwrap.dedent(upload).strip().splitlines()]
    return "state_dir: $state\ntargets:\n  - " + "\n    ".join(body) + "\n"


# --- the shipped example -------------------------------------------------------------


def test_the_example_config_parses_exactly_as_written(places: dict[str, Path]) -> None:
    """config/example.yaml, with its drop folder pointed at a real one, means what its comments say."""
    text = EXAMPLE.read_text(encoding="utf-8").replace("/srv/drop/reports", str(places["drop"]))
    config = parse_config(text, "example.yaml", {"UPLOADER_PASSWORD": PASSWORD})
    drop = places["drop"]

    assert Path("/var/lib/uploader-daemon") == config.state_dir
    assert (config.log.level, config.log.format) == ("info", "json")
    assert config.shutdown_grace == 10.0
    assert config.journal.keep_done_for == 30 * 86400.0
    (target,) = config.targets
    assert target.name == "reports"
    assert drop == target.folder
    assert target.include == ("*",)
    assert target.exclude == (".*", "*.tmp", "*.part", "*~")
    assert target.recursive is False
    assert target.settle == 2.0
    assert (target.watch.poll, target.watch.poll_interval, target.watch.rescan_every) == (False, 5.0, 60.0)
    assert target.concurrency == 4
    assert (target.retry.attempts, target.retry.backoff, target.retry.max_backoff) == (10, 2.0, 600.0)
    assert target.after_upload.action == "archive"
    assert Path(f"{drop}.sent") == target.after_upload.archive_dir
    assert Path(f"{drop}.failed") == target.failed_dir
    assert (target.api.base_url, target.api.timeout, target.api.verify_tls, target.api.ca_file) == (
        "https://api.example.com",
        30.0,
        True,
        None,
    )
    auth = target.auth
    assert isinstance(auth, TokenAuth)
    assert (auth.login.path, auth.login.method, auth.login.username) == ("/auth/login", "POST", "uploader")
    assert auth.login.password.value == PASSWORD
    assert auth.login.password.source == "env UPLOADER_PASSWORD"
    assert (auth.login.token_field, auth.login.expires_in_field) == ("access_token", "expires_in")
    assert (auth.refresh.path, auth.refresh.method) == ("/auth/tokenRefresh", "GET")
    assert (auth.refresh.check_every, auth.refresh.before_expiry, auth.refresh.active_within) == (
        1800.0,
        300.0,
        1800.0,
    )
    assert (auth.header, auth.header_name) == ("Bearer {token}", "Authorization")
    assert (auth.default_lifetime, auth.expiry_margin) == (3600.0, 10.0)
    (step,) = target.steps
    assert isinstance(step, MultipartStep)
    assert (step.name, step.method, step.path, step.file_field, step.credential) == (
        "upload",
        "POST",
        "/api/envio",
        "file",
        True,
    )


def test_the_example_config_as_shipped_only_lacks_its_drop_folder() -> None:
    """Loaded from disk unchanged, the example's only problems are this machine's missing /srv/drop."""
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, {"UPLOADER_PASSWORD": PASSWORD})
    missing_parent = (
        "/srv/drop does not exist; fix the path, or create it: the daemon creates only the last folder"
    )
    expected = (
        f"targets[0].after_upload.archive_dir: {missing_parent} (reports.sent)",
        f"targets[0].failed_dir: {missing_parent} (reports.failed)",
        "targets[0].folder: /srv/drop/reports does not exist; create it or fix the path",
    )
    assert expected == caught.value.problems
    assert str(EXAMPLE) == caught.value.source


def _example_with_local_paths(path: Path, root: Path) -> tuple[str, dict[str, str]]:
    """An example's text with its folders and secret files moved under ``root``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    credentials = root / "credentials"
    credentials.mkdir()
    environ: dict[str, str] = {"CREDENTIALS_DIRECTORY": str(credentials)}
    data["state_dir"] = str(root / "state")

    def fill_secrets(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((kind, name),) = node.items()
            if kind == "env":
                environ[name] = f"dummy-{name}"
            elif kind == "credential":
                (credentials / name).write_text(f"dummy-{name}\n", encoding="utf-8")
            elif kind == "file":
                secret_file = root / f"secret-{len(list(root.iterdir()))}"
                secret_file.write_text("dummy-file-secret\n", encoding="utf-8")
                return {"file": str(secret_file)}
        if isinstance(node, dict):
            return {key: fill_secrets(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill_secrets(item) for item in node]
        return node

    for index, target in enumerate(data["targets"]):
        drop = root / f"drop{index}"
        drop.mkdir()
        target["folder"] = str(drop)
        target["failed_dir"] = str(root / f"failed{index}")
        if target.get("after_upload", {}).get("archive_dir"):
            target["after_upload"]["archive_dir"] = str(root / f"sent{index}")
        if "output_dir" in target.get("upload", {}):
            target["upload"]["output_dir"] = str(root / f"out{index}")
    return yaml.safe_dump(fill_secrets(data)), environ


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_each_shipped_example_parses_with_its_secrets_and_folders_present(
    example: Path, tmp_path: Path
) -> None:
    """Every config/examples/*.yaml is valid once its secrets and folders exist."""
    text, environ = _example_with_local_paths(example, tmp_path)
    config = parse_config(text, example.name, environ)
    assert config.targets
    for target in config.targets:
        check_step_list(target.steps)


def test_there_are_shipped_examples_to_check() -> None:
    """The parametrized example test above must not pass by having nothing to run."""
    assert EXAMPLES, "config/examples/*.yaml is empty"


# --- the YAML file itself ------------------------------------------------------------


def test_a_yaml_syntax_error_gives_the_line(places: dict[str, Path]) -> None:
    """A broken indentation is reported with its line and column, not a traceback."""
    text = """\
        state_dir: /tmp/state
        targets:
          - name: a
           folder: /tmp
    """
    problem = one_problem(text, places)
    assert problem.startswith("line 4, column ")
    assert "YAML syntax error" in problem


def test_a_duplicate_key_is_refused_with_both_lines(places: dict[str, Path]) -> None:
    """YAML would silently keep the last of two equal keys; the loader names both lines."""
    text = """\
        state_dir: /tmp/state
        state_dir: /tmp/other
        targets: []
    """
    problem = one_problem(text, places)
    assert "'state_dir' appears twice (lines 1 and 2); keep one" in problem
    assert problem.startswith("line 2,")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_an_empty_file_is_refused(text: str, places: dict[str, Path]) -> None:
    """A file with nothing in it points to the example."""
    assert one_problem(text, places) == "the config file is empty; start from config/example.yaml"


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_a_top_level_that_is_not_a_mapping_is_refused(text: str, kind: str, places: dict[str, Path]) -> None:
    """The top level must hold keys."""
    expected = f"the top level must be a mapping of keys (state_dir, targets, ...), not a {kind}"
    assert expected == one_problem(text, places)


def test_a_missing_config_file_is_reported_in_a_sentence(tmp_path: Path) -> None:
    """load_config on a path that does not exist raises ConfigError, not FileNotFoundError."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml", {})
    assert (caught.value.problems) == (
        "the config file does not exist; create it (see config/example.yaml) or pass --config",
    )
    assert caught.value.exit_code == 2


def test_an_unreadable_config_file_is_reported_in_a_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permission denied becomes a sentence (the OS refusal is simulated: tests may run as root)."""
    path = tmp_path / "config.yaml"
    path.write_text("state_dir: /tmp\n", encoding="utf-8")
    real_read_text = Path.read_text

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.problems == ("the config file is not readable by this user (permission denied)",)


def test_a_directory_or_binary_file_as_config_is_reported(tmp_path: Path) -> None:
    """A directory and a non-UTF-8 file each get their own sentence."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, {})
    assert caught.value.problems == ("this is a directory; --config needs the YAML file",)
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"state_dir: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(binary, {})
    assert caught.value.problems == ("the config file is not UTF-8 text",)


def test_the_default_config_path_follows_the_environment() -> None:
    """$UPLOADER_DAEMON_CONFIG wins; otherwise /etc/uploader-daemon/config.yaml."""
    assert Path("/etc/uploader-daemon/config.yaml") == default_config_path({})
    assert Path("/x/y.yaml") == default_config_path({"UPLOADER_DAEMON_CONFIG": "/x/y.yaml"})


# --- every problem at once -----------------------------------------------------------


def test_every_problem_is_listed_at_once_with_its_key_path(places: dict[str, Path]) -> None:
    """One run of the checker tells the admin everything wrong, each line with its key path."""
    text = """\
        state_dir: $state
        targts: []
        targets:
          - name: reports
            folder: $state/missing
            concurrency: -1
            settle: 30x
            retry: {attempts: 0}
            after_upload: {action: delete, archive_dir: $sent}
            failed_dir: $failed
            api: {base_url: "ftp://api.example.com"}
            auth: {type: token}
            upload: {type: multipar}
    """
    found = problems(text, places)
    keys = [problem.split(":", 1)[0] for problem in found]
    assert sorted(keys) == sorted(
        [
            "targts",
            "targets[0].folder",
            "targets[0].concurrency",
            "targets[0].settle",
            "targets[0].retry.attempts",
            "targets[0].after_upload",
            "targets[0].api.base_url",
            "targets[0].auth.login",
            "targets[0].upload",
        ]
    )
    assert all("Traceback" not in problem and "\n" not in problem for problem in found)
    assert "targets[0].auth.login: required key is missing" in found
    assert f"targets[0].folder: {places['state']}/missing does not exist; create it or fix the path" in found


def test_the_error_text_counts_the_problems_and_names_the_source(places: dict[str, Path]) -> None:
    """str(ConfigError) is what the CLI prints: the file, the count, one indented line each."""
    with pytest.raises(ConfigError) as caught:
        parse(with_target_lines("concurrency: 0", "settle: soon"), places)
    lines = str(caught.value).splitlines()
    assert lines[0] == "test.yaml has 2 problems:"
    assert all(line.startswith("  targets[0].") for line in lines[1:])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("foldr: /tmp", "targets[0].foldr: unknown key 'foldr'; did you mean 'folder'?"),
        ("retry: {atempts: 3}", "targets[0].retry.atempts: unknown key 'atempts'; did you mean 'attempts'?"),
        ("watch: {pol: true}", "targets[0].watch.pol: unknown key 'pol'; did you mean 'poll'?"),
    ],
)
def test_an_unknown_key_suggests_the_closest_name(line: str, expected: str, places: dict[str, Path]) -> None:
    """A typo names the key the admin probably meant."""
    assert expected == one_problem(with_target_lines(line), places)


def test_an_unknown_key_at_the_top_and_inside_unions_suggests_the_closest_name(
    places: dict[str, Path],
) -> None:
    """The suggestion works at the top level, inside an auth type and inside a step of a list."""
    text = """\
        state_dir: $state
        shutdown_grase: 5s
        targets:
          - name: reports
            folder: $drop
            failed_dir: $failed
            after_upload: {action: keep}
            api: {base_url: "https://api.example.com"}
            auth:
              type: token
              login: {username: u, password: hunter2-Very-Secret, token_feild: token}
            upload:
              type: steps
              steps:
                - {kind: multipart, name: send, path: /send, save: {id: id}, expekt: [201]}
    """
    assert {
        "shutdown_grase: unknown key 'shutdown_grase'; did you mean 'shutdown_grace'?",
        "targets[0].auth.login.token_feild: unknown key 'token_feild'; did you mean 'token_field'?",
        "targets[0].upload.steps[0].expekt: unknown key 'expekt'; did you mean 'expect'?",
    } == set(problems(text, places))


def test_an_unknown_key_with_no_close_match_lists_the_allowed_keys(places: dict[str, Path]) -> None:
    """When nothing is close, the admin sees what is allowed there."""
    problem = one_problem(with_target_lines("retry: {zzz: 1}"), places)
    assert problem == "targets[0].retry.zzz: unknown key 'zzz'; allowed here: attempts, backoff, max_backoff"


def test_a_union_tag_that_is_also_a_key_name_does_not_confuse_the_key_path(places: dict[str, Path]) -> None:
    """``type: headers`` has a ``headers`` key: the path is auth.headers, not auth.headers.headers."""
    problem = one_problem(with_target_lines(auth="auth: {type: headers, headers: [a, b]}"), places)
    assert problem == "targets[0].auth.headers: must be a mapping of keys, not a list"


def test_a_mapping_key_of_the_wrong_type_is_named_as_a_key(places: dict[str, Path]) -> None:
    """``5: x`` under headers is a bad key, not a bad value."""
    problem = one_problem(with_target_lines(auth="auth: {type: headers, headers: {5: x-value}}"), places)
    assert problem == "targets[0].auth.headers: key 5 must be text, not int"


def test_missing_required_sections_are_each_named(places: dict[str, Path]) -> None:
    """A target with only a name lists each missing key, and no targets at all is refused."""
    found = problems("state_dir: $state\ntargets:\n  - name: bare\n", places)
    expected = {
        f"targets[0].{key}: required key is missing"
        for key in ("folder", "after_upload", "failed_dir", "api", "auth", "upload")
    }
    assert expected == set(found)
    assert problems("state_dir: $state\ntargets: []\n", places) == ("targets: must not be empty",)
    assert problems("state_dir: $state\n", places) == ("targets: required key is missing",)


# --- values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://api.example.com", "'ftp://api.example.com' is not an http:// or https:// URL with a host"),
        ("https://", "'https://' is not an http:// or https:// URL with a host"),
        ("api.example.com", "'api.example.com' is not an http:// or https:// URL with a host"),
        (
            "https://api.example.com/v1?key=1",
            "'https://api.example.com/v1?key=1' must not have a query or fragment; put those in the step",
        ),
        (
            "https://api.example.com/#top",
            "'https://api.example.com/#top' must not have a query or fragment; put those in the step",
        ),
        ("https://api.example.com:99999", "'https://api.example.com:99999' has an invalid port"),
        ("42", "must be an http:// or https:// URL"),
    ],
)
def test_a_bad_base_url_is_refused(url: str, expected: str, places: dict[str, Path]) -> None:
    """Only http(s) URLs with a host and no query reach the HTTP client."""
    written = url if url.isdigit() else f'"{url}"'
    text = with_target_lines().replace('base_url: "https://api.example.com"', f"base_url: {written}")
    assert f"targets[0].api.base_url: {expected}" == one_problem(text, places)


def test_the_base_url_loses_its_trailing_slash_and_keeps_its_path(places: dict[str, Path]) -> None:
    """Paths are joined to the base URL, so a trailing / would double."""
    text = with_target_lines().replace("https://api.example.com", "https://api.example.com/v1/")
    assert parse(text, places).targets[0].api.base_url == "https://api.example.com/v1"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("concurrency: -1", "targets[0].concurrency: must be at least 1, not -1"),
        ("concurrency: 0", "targets[0].concurrency: must be at least 1, not 0"),
        ("concurrency: 1000", "targets[0].concurrency: must be at most 256, not 1000"),
        ("concurrency: four", "targets[0].concurrency: must be a whole number, not 'four'"),
        ("retry: {attempts: 0}", "targets[0].retry.attempts: must be at least 1, not 0"),
        (
            "retry: {backoff: 1m, max_backoff: 10s}",
            "targets[0].retry: max_backoff must not be shorter than backoff",
        ),
        ("recursive: maybe", "targets[0].recursive: must be true or false, not 'maybe'"),
    ],
)
def test_out_of_range_numbers_are_refused(line: str, expected: str, places: dict[str, Path]) -> None:
    """Counts must be sensible whole numbers."""
    assert expected == one_problem(with_target_lines(line), places)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("30x", "'30x' is not a duration"),
        ("'2 sec'", "'2 sec' is not a duration"),
        ("''", "'' is not a duration"),
        ("-5s", "'-5s' is negative; durations must be zero or more"),
        ("-5", "-5 is negative; durations must be zero or more"),
        ("true", "True is not a duration"),
        (".nan", "nan is not a duration"),
        (".inf", "inf is not a duration"),
        ("[1, 2]", "[1, 2] is not a duration"),
    ],
)
def test_a_bad_duration_is_refused(value: str, reason: str, places: dict[str, Path]) -> None:
    """Durations are checked with a hint on how to write them."""
    problem = one_problem(with_target_lines(f"settle: {value}"), places)
    assert problem.startswith(f"targets[0].settle: {reason}")


def test_a_zero_interval_is_refused_where_a_wait_must_be_positive(places: dict[str, Path]) -> None:
    """settle may be 0s, but a poll interval of 0 would spin."""
    assert parse(with_target_lines("settle: 0s"), places).targets[0].settle == 0.0
    problem = one_problem(with_target_lines("watch: {poll_interval: 0s}"), places)
    assert problem == "targets[0].watch.poll_interval: must be longer than zero"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("90", 90.0),
        (90, 90.0),
        (1.5, 1.5),
        ("1.5s", 1.5),
        ("1m 30s", 90.0),
        (0, 0.0),
    ],
)
def test_durations_parse_to_seconds(value: object, seconds: float) -> None:
    """Every documented duration form becomes a number of seconds."""
    assert seconds == parse_duration(value)


def test_a_duration_in_the_config_becomes_seconds(places: dict[str, Path]) -> None:
    """The config holds seconds, whichever form the admin wrote."""
    text = with_target_lines("settle: 500ms", "retry: {backoff: 2s, max_backoff: 1h30m}")
    target = parse(text, places).targets[0]
    assert (target.settle, target.retry.backoff, target.retry.max_backoff) == (0.5, 2.0, 5400.0)


def test_a_relative_folder_is_refused(places: dict[str, Path]) -> None:
    """Under systemd the working directory is /, so relative paths would surprise."""
    text = with_target_lines().replace("failed_dir: $failed", "failed_dir: failed")
    expected = "targets[0].failed_dir: 'failed' must be an absolute path (starting with /)"
    assert expected == one_problem(text, places)


def test_a_folder_that_is_a_file_is_refused(places: dict[str, Path]) -> None:
    """The drop folder must be a directory."""
    places["drop"].rmdir()
    places["drop"].write_text("oops", encoding="utf-8")
    assert f"targets[0].folder: {places['drop']} is not a directory" == one_problem(VALID, places)


def test_a_target_name_with_spaces_is_refused(places: dict[str, Path]) -> None:
    """Names appear in every log line and in the journal: no spaces or slashes."""
    text = VALID.replace("name: reports", "name: my reports")
    assert one_problem(text, places).startswith("targets[0].name: 'my reports' may only use letters, digits")


def test_the_parsed_config_is_immutable(places: dict[str, Path]) -> None:
    """Parsed once, passed down, never changed."""
    config = parse(VALID, places)
    with pytest.raises(ValueError, match="frozen"):
        config.targets[0].concurrency = 9  # type: ignore[misc]


# --- secrets in the config -------------------------------------------------------------


def _password_config(source: str) -> str:
    return VALID.replace("password: hunter2-Very-Secret", f"password: {source}")


def test_a_password_from_the_environment_is_read(places: dict[str, Path]) -> None:
    """{env: NAME} reads the variable given to the loader."""
    auth = parse(_password_config("{env: PW}"), places, {"PW": PASSWORD}).targets[0].auth
    assert isinstance(auth, TokenAuth)
    assert (auth.login.password.value, auth.login.password.source) == (PASSWORD, "env PW")


@pytest.mark.parametrize(
    ("source", "environ", "reason"),
    [
        ("{env: PW}", {}, "environment variable PW is not set; export it before starting the daemon"),
        ("{env: PW}", {"PW": ""}, "environment variable PW is empty"),
        ("{env: ''}", {}, "{env: ...} needs a non-empty name"),
        ("''", {}, "is empty; write the secret, or {env: NAME}, {file: PATH} or {credential: NAME}"),
        ("{bogus: X}", {}, "unknown secret source 'bogus'; use env, file or credential"),
        (
            "{env: A, file: /b}",
            {},
            "must be a string, or exactly one of {env: NAME}, {file: PATH}, {credential: NAME}",
        ),
        (
            "{credential: pw}",
            {},
            "{credential: pw} needs $CREDENTIALS_DIRECTORY, which systemd sets from LoadCredential=pw:/path; "
            "outside systemd use {file: PATH} or {env: NAME}",
        ),
    ],
)
def test_an_unusable_secret_source_is_refused(
    source: str, environ: dict[str, str], reason: str, places: dict[str, Path]
) -> None:
    """Each way a secret can be unavailable gets its own sentence at the password's key path."""
    problem = one_problem(_password_config(source), places, environ)
    assert f"targets[0].auth.login.password: {reason}" == problem


def test_a_missing_or_empty_secret_file_is_refused(places: dict[str, Path]) -> None:
    """{file: PATH} must name a readable, non-empty file."""
    missing = places["creds"] / "missing"
    problem = one_problem(_password_config(f"{{file: {missing}}}"), places)
    assert f"targets[0].auth.login.password: secret file {missing} does not exist" == problem
    empty = places["creds"] / "empty"
    empty.write_text("\n", encoding="utf-8")
    problem = one_problem(_password_config(f"{{file: {empty}}}"), places)
    assert f"targets[0].auth.login.password: secret file {empty} is empty" == problem


def test_a_systemd_credential_is_read_without_its_trailing_newline(places: dict[str, Path]) -> None:
    """{credential: NAME} reads $CREDENTIALS_DIRECTORY/NAME, as LoadCredential= provides it."""
    (places["creds"] / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
    environ = {"CREDENTIALS_DIRECTORY": str(places["creds"])}
    auth = parse(_password_config("{credential: pw}"), places, environ).targets[0].auth
    assert isinstance(auth, TokenAuth)
    assert (auth.login.password.value, auth.login.password.source) == (PASSWORD, "credential pw")


def test_a_credential_missing_from_the_credentials_directory_is_refused(places: dict[str, Path]) -> None:
    """The directory is set but LoadCredential= did not provide this name."""
    environ = {"CREDENTIALS_DIRECTORY": str(places["creds"])}
    problem = one_problem(_password_config("{credential: pw}"), places, environ)
    assert f"targets[0].auth.login.password: secret file {places['creds'] / 'pw'} does not exist" == problem


def test_secrets_are_left_unread_when_only_the_journal_is_needed(places: dict[str, Path]) -> None:
    """``status`` parses the config with resolve_secrets=False: an unset variable is no problem."""
    text = Template(textwrap.dedent(_password_config("{env: UNSET}"))).substitute(
        {name: str(path) for name, path in places.items()}
    )
    config = parse_config(text, "test.yaml", {}, resolve_secrets=False)
    auth = config.targets[0].auth
    assert isinstance(auth, TokenAuth)
    assert auth.login.password.value == ""


@pytest.mark.parametrize(
    "auth",
    [
        "auth:\n  type: token\n"
        "  login: {username: [u], password: hunter2-Very-Secret, method: hunter2-Very-Secret}",
        "auth: {type: headers, headers: 'app-key: hunter2-Very-Secret'}",
        "auth: {type: headers, headers: {app-key: hunter2-Very-Secret, user-token: [1]}}",
        "auth: {type: cognito, region: r, user_pool_id: eu_1, client_id: c, username: u,\n"
        "       password: hunter2-Very-Secret, token: hunter2-Very-Secret}",
        "auth:\n  type: token\n  login: hunter2-Very-Secret",
    ],
)
def test_a_secret_never_appears_in_a_config_error(auth: str, places: dict[str, Path]) -> None:
    """Wrong types next to (or instead of) a secret are reported without echoing the secret."""
    with pytest.raises(ConfigError) as caught:
        parse(with_target_lines(auth=auth), places)
    assert caught.value.problems
    assert PASSWORD not in str(caught.value)
    assert all(PASSWORD not in problem for problem in caught.value.problems)


def test_headers_and_cognito_auth_parse_with_their_secrets(places: dict[str, Path]) -> None:
    """Static header secrets and a Cognito password/client secret each resolve from their source."""
    headers = (
        parse(
            with_target_lines(
                auth="auth: {type: headers, headers: {app-key: {env: KEY}, user-token: literal-tok}}"
            ),
            places,
            {"KEY": "app-key-123"},
        )
        .targets[0]
        .auth
    )
    assert isinstance(headers, HeadersAuth)
    assert {name: secret.value for name, secret in headers.headers.items()} == {
        "app-key": "app-key-123",
        "user-token": "literal-tok",
    }
    cognito = (
        parse(
            with_target_lines(
                auth="auth: {type: cognito, region: eu-west-1, user_pool_id: eu-west-1_Ab1, "
                "client_id: c1, client_secret: {env: CS}, username: u, password: {env: PW}}"
            ),
            places,
            {"CS": "client-secret-1", "PW": PASSWORD},
        )
        .targets[0]
        .auth
    )
    assert isinstance(cognito, CognitoAuth)
    assert (cognito.client_secret.value if cognito.client_secret else None, cognito.password.value) == (
        "client-secret-1",
        PASSWORD,
    )


def test_a_cognito_pool_id_without_a_region_is_refused(places: dict[str, Path]) -> None:
    """A pool id looks like eu-west-1_AbCdEf123."""
    auth = "auth: {type: cognito, region: r, user_pool_id: pool, client_id: c, username: u, password: pw-1}"
    problem = one_problem(with_target_lines(auth=auth), places)
    assert "targets[0].auth.user_pool_id: 'pool' is not a user pool id" in problem


def test_a_header_template_without_the_token_is_refused(places: dict[str, Path]) -> None:
    """header: 'Bearer' alone would send no token at all."""
    auth = "auth:\n  type: token\n  login: {username: u, password: pw-1}\n  header: Bearer"
    assert one_problem(with_target_lines(auth=auth), places).startswith(
        "targets[0].auth.header: 'Bearer' must contain {token}"
    )


# --- folders and targets ---------------------------------------------------------------


def test_archive_needs_an_archive_dir(places: dict[str, Path]) -> None:
    """action archive with nowhere to archive to is refused."""
    text = VALID.replace("{action: archive, archive_dir: $sent}", "{action: archive}")
    expected = "targets[0].after_upload: action archive needs archive_dir: the folder delivered files move to"
    assert expected == one_problem(text, places)


def test_an_archive_dir_with_action_delete_is_refused(places: dict[str, Path]) -> None:
    """An archive_dir that would never be used is a sign of a mistake."""
    text = VALID.replace("action: archive,", "action: delete,")
    expected = "targets[0].after_upload: archive_dir is only used with action archive, not delete"
    assert expected == one_problem(text, places)


def test_keep_and_delete_need_no_archive_dir(places: dict[str, Path]) -> None:
    """The other actions stand alone."""
    for action in ("keep", "delete"):
        text = VALID.replace("{action: archive, archive_dir: $sent}", f"{{action: {action}}}")
        assert action == parse(text, places).targets[0].after_upload.action


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("failed_dir: $failed", "failed_dir: $drop", "failed_dir"),
        ("archive_dir: $sent", "archive_dir: $drop", "after_upload.archive_dir"),
    ],
)
def test_an_output_folder_equal_to_the_drop_folder_is_refused(
    old: str, new: str, key: str, places: dict[str, Path]
) -> None:
    """Files written back into the drop folder would be sent again."""
    expected = f"targets[0]: {key} must differ from folder, or delivered files would be sent again"
    assert expected == one_problem(VALID.replace(old, new), places)


def test_a_conversion_output_dir_equal_to_the_drop_folder_is_refused(places: dict[str, Path]) -> None:
    """The converted results would be picked up and converted again."""
    upload = "{type: conversion_task, conversion_type: mp4, output_dir: $drop}"
    expected = (
        "targets[0]: output_dir of step result must differ from folder, "
        "or delivered files would be sent again"
    )
    assert expected == one_problem(with_target_lines(upload=upload), places)


TWO_TARGETS = """
    state_dir: $state
    targets:
      - name: first
        folder: $drop
        recursive: $recursive
        failed_dir: $failed
        after_upload: {action: keep}
        api: {base_url: "https://api.example.com"}
        auth: {type: none}
        upload: {type: multipart}
      - name: $second_name
        folder: $second_folder
        failed_dir: $out
        after_upload: {action: keep}
        api: {base_url: "https://api.example.com"}
        auth: {type: none}
        upload: {type: multipart}
"""


def two_targets(places: dict[str, Path], *, name: str, folder: Path, recursive: bool = False) -> str:
    return Template(textwrap.dedent(TWO_TARGETS)).safe_substitute(
        second_name=name, second_folder=str(folder), recursive=str(recursive).lower()
    )


def test_two_targets_watching_the_same_folder_are_refused(places: dict[str, Path]) -> None:
    """A file must belong to exactly one target."""
    problem = one_problem(two_targets(places, name="second", folder=places["drop"]), places)
    expected = (
        f"targets: targets 'first' and 'second' both watch {places['drop']}; "
        "a file must belong to exactly one target"
    )
    assert expected == problem


def test_a_recursive_target_above_another_targets_folder_is_refused(places: dict[str, Path]) -> None:
    """A recursive watch would also pick up the sub-folder another target owns."""
    inner = places["drop"] / "inner"
    inner.mkdir()
    problem = one_problem(two_targets(places, name="second", folder=inner, recursive=True), places)
    assert problem.startswith("targets: targets 'first' and 'second' both watch")
    config = parse(two_targets(places, name="second", folder=inner, recursive=False), places)
    assert [target.name for target in config.targets] == ["first", "second"]


def test_duplicate_target_names_are_refused(places: dict[str, Path]) -> None:
    """Names key the journal: two targets cannot share one."""
    problem = one_problem(two_targets(places, name="first", folder=places["other"]), places)
    assert problem == "targets: target name 'first' is used more than once; names must be unique"


# --- auth and upload types -------------------------------------------------------------


def test_an_auth_section_without_a_type_is_refused(places: dict[str, Path]) -> None:
    """The type picks the whole shape of the section, so it is required."""
    problem = one_problem(with_target_lines(auth="auth: {login: {username: u, password: pw-1}}"), places)
    assert problem == "targets[0].auth: needs a type key"


def test_an_unknown_upload_type_lists_the_known_ones(places: dict[str, Path]) -> None:
    """A misspelled preset names every preset."""
    problem = one_problem(with_target_lines(upload="{type: multipar}"), places)
    assert problem.startswith("targets[0].upload: unknown type 'multipar'; use one of: 'multipart'")
    presets = ("runrun_document", "presigned_with_status", "conversion_task", "gateway_presigned", "steps")
    for preset in presets:
        assert preset in problem


def test_an_unknown_auth_type_lists_the_known_ones(places: dict[str, Path]) -> None:
    """The same for auth."""
    problem = one_problem(with_target_lines(auth="auth: {type: oauth}"), places)
    expected = "targets[0].auth: unknown type 'oauth'; use one of: 'token', 'cognito', 'headers', 'none'"
    assert expected == problem


STEPS = """
    type: steps
    steps:
      - {kind: request, name: create, path: /documents, save: {id: id, fields: fields}}
      - {kind: storage_post, name: store, url: "https://bucket.example.com/", fields: "$fields_template"}
      - {kind: request, name: confirm, path: "$confirm_path"}
"""


def steps_upload(
    *, fields_template: str = "{create.fields}", confirm_path: str = "/documents/{create.id}/ok"
) -> str:
    return Template(STEPS).safe_substitute(fields_template=fields_template, confirm_path=confirm_path)


def test_a_valid_step_list_is_kept_in_order(places: dict[str, Path]) -> None:
    """type: steps runs the admin's list as written."""
    steps = parse(with_target_lines(upload=steps_upload()), places).targets[0].steps
    assert [(step.name, step.kind) for step in steps] == [
        ("create", "request"),
        ("store", "storage_post"),
        ("confirm", "request"),
    ]


@pytest.mark.parametrize(
    ("upload", "expected"),
    [
        (
            steps_upload(fields_template="{creat.fields}"),
            "steps[1] (store): {creat.fields} refers to 'creat', which is not defined here; "
            "use one of: create, file, target",
        ),
        (
            steps_upload(confirm_path="/documents/{create.document_id}/ok"),
            "steps[2] (confirm): {create.document_id} refers to 'document_id', which 'create' does not provide; "  # noqa: E501
            "it provides: id, fields",
        ),
        (
            steps_upload(confirm_path="/documents/{confirm.id}/ok"),
            "steps[2] (confirm): {confirm.id} refers to 'confirm', which is not defined here; "
            "use one of: create, file, store, target",
        ),
        (
            steps_upload(confirm_path="/documents/{file}/ok"),
            "steps[2] (confirm): {file} needs a field, e.g. {file.name}",
        ),
        (
            steps_upload(confirm_path="/documents/{create.id/ok"),
            "steps[2] (confirm): '/documents/{create.id/ok' has a stray '{'",
        ),
        (
            steps_upload(fields_template="{store.fields}"),
            "steps[1] (store): {store.fields} refers to 'store', which is not defined here",
        ),
    ],
)
def test_a_step_template_referring_to_an_unknown_value_names_the_step(
    upload: str, expected: str, places: dict[str, Path]
) -> None:
    """Each template may use only file, target and the values earlier steps saved."""
    problem = one_problem(with_target_lines(upload=upload), places)
    assert problem.startswith(f"targets[0].upload: {expected}")


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            "[{kind: request, name: a, path: /a}]",
            "no step sends the file; add a multipart or storage_post step",
        ),
        (
            "[{kind: multipart, name: a, path: /a}, {kind: multipart, name: a, path: /b}]",
            "steps[1]: step name 'a' is used twice",
        ),
    ],
)
def test_an_incoherent_step_list_is_refused(steps: str, expected: str, places: dict[str, Path]) -> None:
    """A step list must send the file and name each step once."""
    problem = one_problem(with_target_lines(upload=f"{{type: steps, steps: {steps}}}"), places)
    assert f"targets[0].upload: {expected}" == problem


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            "{kind: multipart, name: file, path: /a}",
            "targets[0].upload.steps[0].name: 'file' is reserved for template values; choose another step name",  # noqa: E501
        ),
        (
            "{kind: multipart, name: a}",
            "targets[0].upload.steps[0]: step 'a' needs exactly one of path or url",
        ),
        (
            "{kind: multipart, name: a, path: a}",
            "targets[0].upload.steps[0]: step 'a': path 'a' must start with /",
        ),
        (
            "{kind: upload, name: a, path: /a}",
            "targets[0].upload.steps[0]: unknown kind 'upload'; use one of: ",
        ),
    ],
)
def test_a_malformed_step_is_refused_at_its_position(
    step: str, expected: str, places: dict[str, Path]
) -> None:
    """Problems inside one step carry the step's index in the key path."""
    problem = one_problem(with_target_lines(upload=f"{{type: steps, steps: [{step}]}}"), places)
    assert problem.startswith(expected)


def test_a_storage_post_with_the_credential_is_refused(places: dict[str, Path]) -> None:
    """The presigned fields are the storage's authorization: the API credential never goes there."""
    upload = steps_upload().replace('"{create.fields}"}', '"{create.fields}", credential: true}')
    problem = one_problem(with_target_lines(upload=upload), places)
    assert problem.startswith(
        "targets[0].upload.steps[1].credential: a storage_post never carries the target's credential"
    )


def test_a_credentialed_step_to_another_host_is_refused(places: dict[str, Path]) -> None:
    """An absolute url on another host than api.base_url must not receive the token."""
    upload = "{type: steps, steps: [{kind: multipart, name: send, url: 'https://elsewhere.example.net/in'}]}"
    problem = one_problem(with_target_lines(upload=upload), places)
    for other_origin in ("http://api.example.com/in", "https://api.example.com:8443/in"):
        other = upload.replace("https://elsewhere.example.net/in", other_origin)
        assert "sends the credential to" in one_problem(with_target_lines(upload=other), places)
    expected = (
        "targets[0]: step 'send' sends the credential to https://elsewhere.example.net/in, "
        "which is not api.base_url's host; set credential: false or use path"
    )
    assert expected == problem


def test_a_step_to_another_host_is_accepted_without_the_credential_or_on_the_same_host(
    places: dict[str, Path],
) -> None:
    """credential: false opts out, and the API's own host is fine either way."""
    elsewhere = (
        "{type: steps, steps: [{kind: multipart, name: send, "
        "url: 'https://elsewhere.example.net/in', credential: false}]}"
    )
    assert parse(with_target_lines(upload=elsewhere), places).targets[0].steps[0].credential is False
    for url in ("https://api.example.com/in", "https://API.example.com:443/in"):
        same = f"{{type: steps, steps: [{{kind: multipart, name: send, url: '{url}'}}]}}"
        assert parse(with_target_lines(upload=same), places).targets[0].steps[0].credential is True


# --- presets ---------------------------------------------------------------------------


def _steps(places: dict[str, Path], upload: str, auth: str | None = None) -> tuple[Any, ...]:
    steps = parse(with_target_lines(upload=upload, auth=auth), places).targets[0].steps
    check_step_list(steps)
    return steps


def test_the_multipart_preset_is_one_credentialed_multipart_step(places: dict[str, Path]) -> None:
    """Flow T: the file as a multipart POST to /api/envio."""
    (step,) = _steps(places, "{type: multipart, fields: {origin: '{file.name}'}}")
    assert isinstance(step, MultipartStep)
    assert (step.name, step.method, step.path, step.file_field, step.fields, step.credential) == (
        "upload",
        "POST",
        "/api/envio",
        "file",
        {"origin": "{file.name}"},
        True,
    )


def test_the_runrun_preset_creates_stores_and_confirms_the_document(places: dict[str, Path]) -> None:
    """Flow R: create document -> storage POST with the returned fields -> mark_as_uploaded."""
    upload = "{type: runrun_document, task_id: 77, storage: {url: 'https://bucket.s3.amazonaws.com/'}}"
    create, store, confirm = _steps(places, upload, auth="auth: {type: headers, headers: {app-key: k-1234}}")
    assert isinstance(create, RequestStep)
    assert (create.name, create.method, create.path) == ("create", "POST", "/documents")
    assert create.query == {"task_id": 77}
    assert create.body == {
        "document": {
            "data_file_name": "{file.name}",
            "data_file_size": "{file.size}",
            "warning_duplicate": False,
        }
    }
    assert create.save == {"id": "id", "fields": "fields"}
    assert isinstance(store, StoragePostStep)
    assert (store.name, store.url, store.fields, store.credential) == (
        "store",
        "https://bucket.s3.amazonaws.com",
        "{create.fields}",
        False,
    )
    assert store.extra_fields == {"success_action_status": "201"}
    assert isinstance(confirm, RequestStep)
    assert (confirm.name, confirm.method, confirm.path) == (
        "confirm",
        "POST",
        "/documents/{create.id}/mark_as_uploaded",
    )


def test_the_runrun_preset_can_create_a_task_per_file(places: dict[str, Path]) -> None:
    """With create_task, a task step comes first and the document attaches to its id."""
    upload = (
        "{type: runrun_document, create_task: {board_id: 5, project_id: 6}, "
        "storage: {url: 'https://bucket.s3.amazonaws.com/'}}"
    )
    task, create, _store, _confirm = _steps(places, upload)
    assert isinstance(task, RequestStep)
    assert (task.name, task.path, task.save) == ("task", "/tasks", {"id": "id"})
    assert task.body == {"task": {"title": "{file.name}", "description": "", "board_id": 5, "project_id": 6}}
    assert create.query == {"task_id": "{task.id}"}


@pytest.mark.parametrize("task", ["", "task_id: 1, create_task: {board_id: 5}, "])
def test_the_runrun_preset_needs_exactly_one_task_source(task: str, places: dict[str, Path]) -> None:
    """Either a fixed task_id or create_task, never both or neither."""
    upload = f"{{type: runrun_document, {task}storage: {{url: 'https://bucket.s3.amazonaws.com/'}}}}"
    expected = "targets[0].upload: set exactly one of task_id (attach to that task) or create_task"
    assert expected == one_problem(with_target_lines(upload=upload), places)


def test_the_presigned_status_preset_announces_stores_confirms_and_polls(places: dict[str, Path]) -> None:
    """Flow P: /upload -> storage POST to the returned url -> /confirm-upload -> poll /consult-status."""
    upload, store, confirm, status = _steps(places, "{type: presigned_with_status}")
    assert isinstance(upload, RequestStep)
    assert (upload.name, upload.path) == ("upload", "/upload")
    assert upload.body == {
        "file_name": "{file.name}",
        "extension": "{file.extension}",
        "len": "{file.size}",
        "type": "{file.mime_type}",
    }
    assert upload.save == {"file_id": "file_id", "fields": "fields", "url": "url"}
    assert isinstance(store, StoragePostStep)
    assert (store.url, store.fields) == ("{upload.url}", "{upload.fields}")
    assert isinstance(confirm, RequestStep)
    assert (confirm.path, confirm.body) == ("/confirm-upload", {"file_id": "{upload.file_id}"})
    assert isinstance(status, PollStep)
    assert (status.name, status.method, status.path, status.query) == (
        "status",
        "GET",
        "/consult-status",
        {"file_id": "{upload.file_id}"},
    )
    assert (status.status_field, status.success, status.failure, status.details_field) == (
        "status",
        ("completed",),
        ("error",),
        "details",
    )
    assert (status.interval, status.deadline) == (5.0, 600.0)


def test_the_presigned_status_preset_uses_a_fixed_storage_url_when_configured(
    places: dict[str, Path],
) -> None:
    """With storage.url set, the url is not read from the response."""
    preset = "{type: presigned_with_status, storage: {url: 'https://s3.example.com/b'}}"
    upload, store, *_ = _steps(places, preset)
    assert "url" not in upload.save
    assert store.url == "https://s3.example.com/b"


def test_the_conversion_preset_submits_polls_and_downloads(places: dict[str, Path]) -> None:
    """Flow C: multipart task -> poll its state -> download the result (-> optional DELETE)."""
    upload = "{type: conversion_task, conversion_type: mp4, output_dir: $out, delete_task: true}"
    submit, task, result, cleanup = _steps(places, upload)
    assert isinstance(submit, MultipartStep)
    assert (submit.name, submit.path, submit.fields, submit.save) == (
        "submit",
        "/api/tasks",
        {"conversion_type": "mp4"},
        {"task_id": "task_id"},
    )
    assert isinstance(task, PollStep)
    assert (task.name, task.path, task.status_field, task.success, task.failure, task.deadline) == (
        "task",
        "/api/tasks/{submit.task_id}",
        "state",
        ("SUCCESS",),
        ("FAILURE", "REVOKED"),
        3600.0,
    )
    assert isinstance(result, DownloadStep)
    assert ("result", "/api/download", {"task_id": "{submit.task_id}"}, places["out"], "{file.stem}.mp4") == (
        result.name,
        result.path,
        result.query,
        result.output_dir,
        result.filename,
    )
    assert isinstance(cleanup, RequestStep)
    expected = ("cleanup", "DELETE", "/api/tasks/{submit.task_id}")
    assert expected == (cleanup.name, cleanup.method, cleanup.path)
    without_cleanup = _steps(places, "{type: conversion_task, conversion_type: mp4, output_dir: $out}")
    assert [step.name for step in without_cleanup] == ["submit", "task", "result"]


def test_the_gateway_preset_locates_then_stores(places: dict[str, Path]) -> None:
    """Flow G: gateway POST with upload_key and folder -> storage POST to the returned url."""
    locate, store = _steps(places, "{type: gateway_presigned, path: /live/uploadclip/, folder: video}")
    assert isinstance(locate, RequestStep)
    assert (locate.name, locate.method, locate.path, locate.query) == (
        "locate",
        "POST",
        "/live/uploadclip/",
        {"upload_key": "{file.name}", "folder": "video"},
    )
    assert locate.save == {"fields": "fields", "url": "url"}
    assert isinstance(store, StoragePostStep)
    expected = ("store", "{locate.url}", "{locate.fields}", False)
    assert expected == (store.name, store.url, store.fields, store.credential)


def test_a_preset_template_may_only_use_file_and_target_values(places: dict[str, Path]) -> None:
    """A preset's templates have no earlier steps to refer to."""
    problem = one_problem(with_target_lines(upload="{type: multipart, fields: {id: '{create.id}'}}"), places)
    assert problem.startswith(
        "targets[0].upload: upload: {create.id} refers to 'create', which is not defined here"
    )


def test_poll_success_and_failure_values_may_be_numbers() -> None:
    """A numeric status written without quotes means the same text the poll compares."""
    from uploader_daemon.config.upload import PollStep

    step = PollStep.model_validate(
        {
            "kind": "poll",
            "name": "p",
            "path": "/s",
            "status_field": "status",
            "success": [2],
            "failure": [3.5],
        }
    )
    assert ("2",) == step.success
    assert ("3.5",) == step.failure
