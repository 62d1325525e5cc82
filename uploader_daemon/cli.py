"""Command line: ``run``, ``check-config``, ``status``, ``demo``.

Exit codes (also in the README):

====  ======================================================================
0     success; ``run`` stopped by SIGTERM/SIGINT after a graceful shutdown
1     unexpected internal error (a bug: please report it with the log)
2     bad configuration or command line: nothing was started
3     the state directory or an output folder cannot be created or used
4     another daemon already runs with this state directory, or watches a drop
      folder with another journal
5     the journal is damaged and cannot be set aside safely (the message says how)
130   (128+N) stopped by a second signal, in-flight uploads cut off
====  ======================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from uploader_daemon import __version__
from uploader_daemon.config import Config, default_config_path, load_config
from uploader_daemon.config.warnings import config_warnings
from uploader_daemon.errors import AdminError
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

    demo = commands.add_parser("demo", help="run a self-contained demo against a local emulated API")
    demo.add_argument("--files", type=int, default=5, help="how many sample files to drop (default 5)")
    demo.set_defaults(handler=_demo)
    return parser


def _config_path(arguments: argparse.Namespace) -> Path:
    path: Path | None = arguments.config
    return path if path is not None else default_config_path(os.environ)


def _run(arguments: argparse.Namespace) -> int:
    from uploader_daemon.daemon import Daemon

    config = load_config(_config_path(arguments))
    redactor = Redactor(secret_values(config))
    configure_logging(config.log.level, config.log.format, redactor)
    log = get_logger("uploader_daemon.cli")
    try:
        return asyncio.run(Daemon(config, redactor=redactor).run())
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

    config: Config = load_config(_config_path(arguments), resolve_secrets=False)
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


def _demo(arguments: argparse.Namespace) -> int:
    from uploader_daemon.demo import run_demo

    return run_demo(files=arguments.files)
