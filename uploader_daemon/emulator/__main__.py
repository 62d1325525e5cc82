"""Run the emulator on its own: ``python -m uploader_daemon.emulator --storage-dir DIR``.

Prints the base URL and the storage URL, then serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from uploader_daemon.emulator.models import STORAGE_GENERATIONS, EmulatorSettings
from uploader_daemon.emulator.server import Emulator


def _user(text: str) -> tuple[str, str]:
    username, colon, password = text.partition(":")
    if not colon or not username:
        raise argparse.ArgumentTypeError(f"expected USERNAME:PASSWORD, got {text!r}")
    return username, password


def build_parser() -> argparse.ArgumentParser:
    """The command line of the standalone emulator."""
    parser = argparse.ArgumentParser(
        prog="python -m uploader_daemon.emulator",
        description="Serve the T, R, P and C test APIs and an S3-like storage endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--storage-dir", type=Path, required=True, help="where received files are written")
    parser.add_argument(
        "--user",
        type=_user,
        action="append",
        metavar="USERNAME:PASSWORD",
        help="a login for flows T and C; repeatable (default: uploader:s3cret)",
    )
    parser.add_argument("--storage-generation", choices=STORAGE_GENERATIONS, default="v4")
    parser.add_argument("--token-lifetime", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument("--jwt-lifetime", type=float, default=3600.0, metavar="SECONDS")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; return 0, 1 if the port is unusable, 2 for bad arguments."""
    arguments = build_parser().parse_args(argv)
    try:
        settings = EmulatorSettings(
            storage_dir=arguments.storage_dir,
            users=dict(arguments.user or [("uploader", "s3cret")]),
            token_lifetime=arguments.token_lifetime,
            jwt_lifetime=arguments.jwt_lifetime,
            storage_generation=arguments.storage_generation,
            host=arguments.host,
            port=arguments.port,
        )
    except ValueError as error:
        print(f"emulator: {error}", file=sys.stderr)
        return 2
    stop_requested = threading.Event()

    def request_stop(_signal_number: int, _frame: FrameType | None) -> None:
        # Only set the flag: the main thread does the stopping.
        stop_requested.set()

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    emulator = Emulator(settings)
    try:
        try:
            emulator.start()
        except OSError as error:
            print(
                f"emulator: cannot listen on {settings.host}:{settings.port} ({error.strerror}); "
                "check --host and --port",
                file=sys.stderr,
            )
            return 1
        print(emulator.base_url, flush=True)
        print(f"storage: {emulator.storage_url}", flush=True)
        stop_requested.wait()
    finally:
        emulator.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
