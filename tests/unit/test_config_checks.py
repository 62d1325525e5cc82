"""Config checks an admin needs: typo'd output parents, runnable hooks, YAML hints at the right line."""

from __future__ import annotations

import stat
import textwrap
from pathlib import Path

import pytest

from uploader_daemon.config import parse_config
from uploader_daemon.errors import ConfigError

TARGET = """
state_dir: {root}/state
targets:
  - name: reports
    folder: {root}/drop
    after_upload: {{action: archive, archive_dir: {archive}}}
    failed_dir: {failed}
    api: {{base_url: "https://api.example.com"}}
    auth: {{type: none}}
    upload: {{type: multipart, path: /api/envio}}
{extra}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "drop").mkdir()
    return tmp_path


def problems_of(text: str, *, check_folders: bool = True, environ: dict[str, str] | None = None) -> list[str]:
    try:
        parse_config(text, "test config", environ or {"PATH": "/usr/bin:/bin"}, check_folders=check_folders)
    except ConfigError as error:
        return list(error.problems)
    return []


def config(root: Path, *, archive: str = "", failed: str = "", extra: str = "") -> str:
    return textwrap.dedent(TARGET).format(
        root=root,
        archive=archive or f"{root}/sent",
        failed=failed or f"{root}/failed",
        extra=textwrap.indent(textwrap.dedent(extra), "    "),
    )


# --- output folders ------------------------------------------------------------------


def test_an_output_folder_whose_parent_is_missing_is_refused_naming_the_parent(root: Path) -> None:
    """`/srv/drop/reprots/failed`: the typo'd parent is named; only the last folder is ever created."""
    text = config(root, failed=f"{root}/reprots/failed", archive=f"{root}/typo/sent")

    assert [
        f"targets[0].after_upload.archive_dir: {root}/typo does not exist; fix the path, or create it: "
        "the daemon creates only the last folder (sent)",
        f"targets[0].failed_dir: {root}/reprots does not exist; fix the path, or create it: "
        "the daemon creates only the last folder (failed)",
    ] == problems_of(text)


def test_an_output_folder_that_is_a_file_is_refused(root: Path) -> None:
    """A failed_dir that exists as a file can never take a parked file."""
    (root / "failed").write_text("oops")

    assert [f"targets[0].failed_dir: {root}/failed exists and is not a directory"] == problems_of(
        config(root)
    )


def test_a_download_output_dir_with_a_missing_parent_is_refused_in_a_preset_and_in_steps(root: Path) -> None:
    """The conversion preset's output_dir and a download step's are checked alike."""
    preset = config(root).replace(
        "upload: {type: multipart, path: /api/envio}",
        f"upload: {{type: conversion_task, conversion_type: mp4, output_dir: {root}/no/out}}",
    )
    steps = config(root).replace(
        "upload: {type: multipart, path: /api/envio}",
        "upload:\n      type: steps\n      steps:\n"
        "        - {name: send, kind: multipart, path: /f}\n"
        f"        - {{name: get, kind: download, path: /r, output_dir: {root}/no/out}}",
    )

    [preset_problem] = problems_of(preset)
    [steps_problem] = problems_of(steps)
    assert preset_problem.startswith(f"targets[0].upload.output_dir: {root}/no does not exist")
    assert steps_problem.startswith(f"targets[0].upload.steps[1].output_dir: {root}/no does not exist")


def test_output_folders_are_not_looked_at_when_folders_are_not_checked(root: Path) -> None:
    """`status` and `list` load the config without touching the machine's folders."""
    assert [] == problems_of(config(root, failed="/nonexistent/typo/failed"), check_folders=False)


# --- hooks ---------------------------------------------------------------------------


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_hooks_with_an_existing_program_and_known_templates_are_accepted(root: Path) -> None:
    """Absolute programs and names found in PATH both run; every known template value is allowed."""
    program = executable(root / "page")
    extra = f"""\
    hooks:
      on_failure: ["{program}", "{{target.name}}", "{{file.relative_path}}", "{{file.failed_path}}"]
      on_outage: [sh, -c, "echo {{target.folder}}"]
      outage_after: 5m
      timeout: 10s
    """

    assert [] == problems_of(config(root, extra=extra))


def test_a_hook_program_that_is_missing_or_not_executable_is_refused(root: Path) -> None:
    """A hook that cannot start would alert nobody: refused at load time, with what to do."""
    plain = root / "not-executable"
    plain.write_text("#!/bin/sh\n")
    extra = f"""\
    hooks:
      on_failure: ["{root}/missing"]
      on_outage: ["{plain}"]
    """

    assert [
        f"targets[0].hooks.on_failure: {root}/missing does not exist; install it or fix the path",
        f"targets[0].hooks.on_outage: {plain} is not executable by this user; chmod +x it",
    ] == problems_of(config(root, extra=extra))


def test_a_hook_program_not_in_path_or_relative_is_refused(root: Path) -> None:
    """Hooks run without a shell, from /: a bare name must be in PATH, a path must be absolute."""
    extra = """\
    hooks:
      on_failure: [no-such-pager]
      on_outage: [bin/pager]
    """

    assert [
        "targets[0].hooks.on_failure: 'no-such-pager' is not found in PATH; "
        "write the program's absolute path",
        "targets[0].hooks.on_outage: 'bin/pager' must be an absolute path "
        "(hooks run without a shell, from /)",
    ] == problems_of(config(root, extra=extra))


def test_a_hook_template_that_refers_to_an_unknown_value_is_refused(root: Path) -> None:
    """{file.name} is an on_failure value; an outage has no file."""
    extra = """\
    hooks:
      on_outage: [sh, "{file.name}"]
    """

    [problem] = problems_of(config(root, extra=extra))
    assert problem.startswith(
        "targets[0].hooks.on_outage: argument 1: {file.name} is not a value hooks know; "
        "use one of: {target.name}, {target.folder}"
    )


def test_an_empty_hook_is_refused(root: Path) -> None:
    """`on_failure: []` names no program."""
    extra = """\
    hooks:
      on_failure: []
    """

    assert [
        "targets[0].hooks.on_failure: must be a list: the program first, then its arguments"
    ] == problems_of(config(root, extra=extra))


# --- YAML hints ----------------------------------------------------------------------


def test_a_tab_gets_the_hint_to_indent_with_spaces_at_its_line() -> None:
    """PyYAML's "found character '\\t'" becomes a sentence an admin can act on."""
    text = "state_dir: /x\ntargets:\n\t- name: a\n"

    assert [
        "line 3, column 1: YAML syntax error: found character '\\t' that cannot start any token; "
        "tabs are not allowed: indent with spaces"
    ] == problems_of(text)


def test_a_line_indented_too_deep_points_at_it_and_the_line_above() -> None:
    """A key indented deeper than its sibling reads as the sibling's value: both lines are named."""
    text = "state_dir: /x\nlog:\n  level: info\n    format: json\n"

    assert [
        "line 4, column 11: YAML syntax error: mapping values are not allowed here; line 4 is indented "
        "deeper than line 3, so it reads as part of that line's value: check the indentation of line 3 "
        "and line 4"
    ] == problems_of(text)


def test_a_line_indented_too_little_points_at_it_and_the_line_above() -> None:
    """A key between two indentation levels is not aligned with anything."""
    text = "state_dir: /x\ntargets:\n  - name: a\n   folder: /y\n"

    [problem] = problems_of(text)
    assert problem.startswith("line 4, column 4: YAML syntax error: expected <block end>")
    assert problem.endswith(
        "; line 4 is not aligned with the keys above it: check the indentation of line 3 and line 4"
    )


def test_a_value_with_a_colon_gets_the_hint_to_quote_it() -> None:
    """`log: a: b` on one line: the value needs quotes."""
    assert [
        "line 2, column 7: YAML syntax error: mapping values are not allowed here; "
        "a value that contains ': ' must be quoted"
    ] == problems_of("state_dir: /x\nlog: a: b\n")


def test_comments_and_blank_lines_are_skipped_when_naming_the_line_above() -> None:
    """The line above is the nearest line of YAML, not a comment between them."""
    text = "state_dir: /x\nlog:\n  level: info\n\n  # the format\n    format: json\n"

    [problem] = problems_of(text)
    assert problem.endswith("check the indentation of line 3 and line 6")


def test_a_mapping_used_as_a_key_is_a_syntax_error_naming_the_line_not_a_crash() -> None:
    """`metrics: {}: x` or `{}: 1` makes a mapping a key: refused with the line, no traceback."""
    with pytest.raises(ConfigError) as caught:
        parse_config("state_dir: /tmp/x\n{}: 1\n", "config.yaml", {})
    assert [
        "line 2, column 1: YAML syntax error: a key must be a name, not a dict (map); a colon after a "
        "{...} or [...] makes it a key: remove it or quote the text"
    ] == list(caught.value.problems)


def test_a_request_with_both_json_and_form_and_a_download_with_save_are_refused() -> None:
    """Both bodies: one would be dropped silently; save on a download: its answer is not JSON."""
    from uploader_daemon.config.upload import DownloadStep, RequestStep

    with pytest.raises(ValueError, match="has both json and form"):
        RequestStep.model_validate(
            {"kind": "request", "name": "create", "path": "/x", "json": {"a": 1}, "form": {"b": 2}}
        )
    with pytest.raises(ValueError, match=r"save: has nothing to read; later steps can use \{result.path\}"):
        DownloadStep.model_validate(
            {"kind": "download", "name": "result", "path": "/x", "output_dir": "/tmp", "save": {"id": "id"}}
        )


def test_a_conversion_poll_mapping_without_a_deadline_keeps_the_hour() -> None:
    """`poll: {interval: 10s}` under conversion_task still waits up to an hour, as documented."""
    from uploader_daemon.config.presets import ConversionTaskUpload

    upload = ConversionTaskUpload.model_validate(
        {
            "type": "conversion_task",
            "conversion_type": "mp4",
            "output_dir": "/tmp/out",
            "poll": {"interval": "10s"},
        }
    )
    assert (10.0, 3600.0) == (upload.poll.interval, upload.poll.deadline)
