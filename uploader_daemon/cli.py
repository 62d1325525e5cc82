"""Command line: ``run``, ``check-config``, ``status``, ``list``, ``retry``, ``upload``,
``example-config``, ``systemd-unit``, ``demo``.

Exit codes (also in the README):

====  ======================================================================
0     success; ``run`` stopped by SIGTERM/SIGINT after a graceful shutdown
1     unexpected internal error (a bug: please report it with the log)
2     bad configuration or command line: nothing was started
3     the state directory or an output folder cannot be created or used, or
      metrics.listen cannot be bound
4     another daemon already runs with this state directory, or watches a drop
      folder with another journal
5     the journal is damaged and cannot be set aside safely (the message says how)
130   (128+N) stopped by a second signal, in-flight uploads cut off
====  ======================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from uploader_daemon import __version__
from uploader_daemon.config import Config, TargetSettings, default_config_path, load_config
from uploader_daemon.config.schema import LogSettings
from uploader_daemon.config.warnings import config_warnings
from uploader_daemon.errors import AdminError, ConfigError
from uploader_daemon.logs import configure_logging, get_logger
from uploader_daemon.redaction import Redactor
from uploader_daemon.secrets import secret_values

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_BAD_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uploader-daemon`` command; returns the exit code."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if not hasattr(arguments, "handler"):
        parser.print_help(sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        code: int = arguments.handler(arguments)
    except AdminError as error:
        print(f"uploader-daemon: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uploader-daemon",
        description="Deliver files dropped into folders to HTTP APIs, and never lose one.",
    )
    parser.add_argument("--version", action="version", version=f"uploader-daemon {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    config_help = (
        "the YAML config file (default: $UPLOADER_DAEMON_CONFIG, else /etc/uploader-daemon/config.yaml)"
    )

    run = commands.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    run.add_argument("--config", type=Path, help=config_help)
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate the config; exit 0 if good, 2 if not")
    check.add_argument("--config", type=Path, help=config_help)
    check.add_argument(
        "--show-steps",
        action="store_true",
        help="print each target's delivery as the full list of HTTP steps",
    )
    check.set_defaults(handler=_check_config)

    status = commands.add_parser(
        "status",
        help="what each target is doing now (waiting, in flight, parked, credential), then its history",
    )
    status.add_argument("--config", type=Path, help=config_help)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    listing = commands.add_parser("list", help="the journal: each file's state, attempts, last error, times")
    listing.add_argument("--config", type=Path, help=config_help)
    listing.add_argument("--target", help="only this target's files")
    listing.add_argument(
        "--state",
        action="append",
        choices=["pending", "uploading", "delivered", "failed", "gone"],
        help="only files in this state (repeat for several)",
    )
    listing.add_argument(
        "--limit", type=int, default=1000, help="the newest this many files (default 1000; 0: all)"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)

    retry = commands.add_parser(
        "retry", help="move parked files from failed_dir back into the drop folder, for delivery"
    )
    retry.add_argument("--config", type=Path, help=config_help)
    retry.add_argument("target", metavar="TARGET", help="the target whose failed_dir holds the files")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every parked file of the target")
    which.add_argument(
        "names", metavar="NAME", nargs="*", default=[], help="a file in failed_dir (its path there)"
    )
    retry.set_defaults(handler=_retry)

    upload = commands.add_parser(
        "upload", help="deliver these files now with a target's credential and steps; they stay in place"
    )
    upload.add_argument("--config", type=Path, help=config_help)
    upload.add_argument("--target", required=True, help="the target whose API, credential and steps to use")
    upload.add_argument("files", metavar="FILE", nargs="+", type=Path, help="the files to deliver")
    upload.add_argument(
        "--attempts", type=int, default=3, help="attempts per file for transient failures (default 3)"
    )
    upload.add_argument("--verbose", action="store_true", help="log at info level (to stderr)")
    upload.set_defaults(handler=_upload)

    example = commands.add_parser("example-config", help="print a shipped example config")
    example.add_argument(
        "flow",
        metavar="FLOW",
        nargs="?",
        help="T, R, P, C, G or steps (default: the config with every key commented)",
    )
    example.set_defaults(handler=_example_config)

    unit = commands.add_parser("systemd-unit", help="print the shipped systemd unit")
    unit.set_defaults(handler=_systemd_unit)

    demo = commands.add_parser("demo", help="run a self-contained demo against a local emulated API")
    demo.add_argument("--files", type=int, default=5, help="how many sample files to drop (default 5)")
    demo.set_defaults(handler=_demo)
    return parser


def _config_path(arguments: argparse.Namespace) -> Path:
    path: Path | None = arguments.config
    return path if path is not None else default_config_path(os.environ)


def _run(arguments: argparse.Namespace) -> int:
    from uploader_daemon.daemon import Daemon

    # A wedged loop killed by systemd's watchdog (SIGABRT) leaves every thread's stack in
    # the journal: the one clue to what it was stuck on.
    faulthandler.enable()

    path = _config_path(arguments)
    config = load_config(path)
    redactor = Redactor(secret_values(config))

    def apply_logging(settings: LogSettings) -> None:
        # Not cached: a reload that changes the level or format must reach every logger.
        configure_logging(settings.level, settings.format, redactor, cache_loggers=False)

    apply_logging(config.log)
    log = get_logger("uploader_daemon.cli")
    daemon = Daemon(
        config,
        redactor=redactor,
        reload_config=functools.partial(load_config, path),
        on_log_change=apply_logging,
    )
    try:
        return asyncio.run(daemon.run())
    except AdminError as error:
        log.error("cannot_start", error=str(error), exit_code=error.exit_code)
        return error.exit_code
    except Exception as error:
        log.critical(
            "daemon_crashed",
            error=str(error),
            error_type=type(error).__name__,
            hint="this is a bug; run with log.level debug for the traceback and report it",
        )
        log.debug("daemon_crash_traceback", exc_info=True)
        return EXIT_INTERNAL_ERROR


def _check_config(arguments: argparse.Namespace) -> int:
    path = _config_path(arguments)
    config = load_config(path)
    print(f"{path}: OK, {len(config.targets)} target(s)")
    for target in config.targets:
        steps = " -> ".join(f"{step.name} ({step.kind})" for step in target.steps)
        print(f"  {target.name}: {target.folder} -> {target.api.base_url} [{target.auth.type}] {steps}")
        if arguments.show_steps:
            dumped = [
                step.model_dump(mode="json", by_alias=True, exclude_defaults=True) for step in target.steps
            ]
            for line in yaml.safe_dump(dumped, sort_keys=False).splitlines():
                print(f"      {line}")
    for problem in config_warnings(config):
        print(f"warning: {problem}")
    return EXIT_OK


def _status(arguments: argparse.Namespace) -> int:
    from uploader_daemon.status import collect_status, render_status

    config = _config_for_reading(arguments)
    text = render_status(collect_status(config), as_json=arguments.json)
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (`| head`) had enough. Point stdout at /dev/null so that the flush at
        # exit does not fail again and print a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_OK


def _list(arguments: argparse.Namespace) -> int:
    from uploader_daemon.commands.listing import read_rows, render

    config = _config_for_reading(arguments)
    if arguments.target is not None:
        _target(config, arguments.target)
    rows = read_rows(config, arguments.target, arguments.state or [], arguments.limit or None)
    render(rows, sys.stdout, as_json=arguments.json)
    return EXIT_OK


def _config_for_reading(arguments: argparse.Namespace) -> Config:
    """The config for commands that read the journal: no secrets, no folder checks...

    ...except the shared journal's ``dsn``, which they need to reach it (it is read
    like every other secret then; the folders stay unchecked, a mount may be down).
    """
    path = _config_path(arguments)
    config: Config = load_config(path, resolve_secrets=False)
    if config.journal.backend == "postgresql":
        config = load_config(path, resolve_secrets=True, check_folders=False)
    return config


def _retry(arguments: argparse.Namespace) -> int:
    from uploader_daemon.commands.retry import move_back, parked_files, select

    config = load_config(_config_path(arguments), resolve_secrets=False)
    target = _target(config, arguments.target)
    problems: list[str] = []
    if arguments.all:
        chosen = parked_files(target)
    else:
        chosen, problems = select(target, arguments.names)
    if problems:
        # Nothing is moved unless every name is right: a retry is all or nothing.
        for problem in problems:
            print(f"uploader-daemon: {problem}", file=sys.stderr)
        print("uploader-daemon: nothing was moved", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not chosen:
        print(f"nothing is parked in {target.failed_dir}")
        return EXIT_OK
    failures = 0
    for parked in chosen:
        try:
            moved = move_back(target, parked)
        except FileExistsError:
            failures += 1
            print(
                f"uploader-daemon: {parked.path}: not moved, {target.folder / parked.original} is taken in "
                "the drop folder; move or rename one of them by hand",
                file=sys.stderr,
            )
            continue
        except OSError as error:
            failures += 1
            print(f"uploader-daemon: {parked.path}: not moved: {error.strerror or error}", file=sys.stderr)
            continue
        sidecar = ", its .error.json removed" if moved.sidecar_removed else ""
        reason = f" (it had failed: {parked.error})" if parked.error else ""
        print(f"moved {parked.path} -> {moved.destination}{sidecar}{reason}")
    print(f"{len(chosen) - failures} of {len(chosen)} file(s) moved back for delivery to {target.name}")
    return EXIT_INTERNAL_ERROR if failures else EXIT_OK


def _upload(arguments: argparse.Namespace) -> int:
    from uploader_daemon.commands.progress import BarReporter, LineReporter
    from uploader_daemon.commands.upload import check_files, upload_files

    config = load_config(_config_path(arguments))
    target = _target(config, arguments.target)
    files = [path.absolute() for path in arguments.files]
    problems = check_files(files)
    if arguments.attempts < 1:
        problems.append("--attempts must be 1 or more")
    if problems:
        for problem in problems:
            print(f"uploader-daemon: {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    redactor = Redactor(secret_values(config))
    reporter = BarReporter(sys.stdout) if sys.stdout.isatty() else LineReporter(sys.stdout)
    with reporter:
        # Logs go to stderr, below the bars: only warnings and errors, unless --verbose.
        level = "info" if arguments.verbose else "warning"
        configure_logging(level, "auto", redactor, sys.stderr)
        outcomes = asyncio.run(
            upload_files(config, target, files, reporter, redactor=redactor, attempts=arguments.attempts)
        )
    delivered = sum(1 for outcome in outcomes if outcome.error is None)
    print(f"{delivered} of {len(outcomes)} file(s) delivered to {target.name}")
    return EXIT_OK if delivered == len(outcomes) else EXIT_INTERNAL_ERROR


def _example_config(arguments: argparse.Namespace) -> int:
    from uploader_daemon.commands.examples import example_config, example_names

    try:
        text = example_config(arguments.flow)
    except KeyError:
        print(
            f"uploader-daemon: no example for {arguments.flow!r}; choose one of: {example_names()}",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    sys.stdout.write(text)
    return EXIT_OK


def _systemd_unit(arguments: argparse.Namespace) -> int:
    from uploader_daemon.commands.examples import systemd_unit

    sys.stdout.write(systemd_unit())
    return EXIT_OK


def _target(config: Config, name: str) -> TargetSettings:
    """The target called ``name``; a :class:`ConfigError` (exit 2) naming the others if none."""
    try:
        return config.target(name)
    except KeyError:
        names = ", ".join(target.name for target in config.targets)
        raise ConfigError("--target", [f"no target is called {name!r}; the config has: {names}"]) from None


def _demo(arguments: argparse.Namespace) -> int:
    from uploader_daemon.demo import run_demo

    return run_demo(files=arguments.files)
