"""Run the benchmarks of issue 10 against one emulator process and print one table.

    .venv/bin/python bench/run.py                      # all of them, full size (make bench)
    .venv/bin/python bench/run.py --only small_files,pickup --files 300
    .venv/bin/python bench/run.py --backlog-files 2000 --large-mib 64 --idle-seconds 3 --json
    .venv/bin/python bench/run.py --only group         # the PostgreSQL group of issue 11

Benchmarks, in the order they run (each module's docstring says what is timed on each
side): small_files, backlog, large_file, pickup, idle, group. Every peer of one
invocation sends to the same emulator process; what it stored is deleted between runs.
group starts a PostgreSQL server of its own (Debian's binaries; skipped without them).

The emulator stores what it receives in RAM (``/dev/shm``, when it is a writable tmpfs;
``--server-storage`` overrides it); the senders' folders and the daemon's journal stay on
the disk under the system's temp dir, as on a real host. The server is not what is
measured: on this machine's ext4, creating a file cost 0.5 to 1.8 ms of CPU, growing as
the file system churned (0.05 ms on tmpfs), so a server storing to disk slowed down run
by run and handicapped whichever side ran later.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import backlog, group, idle, large_file, pickup, small_files
from bench.harness import Server, running_server
from bench.results import Row, details, table

Benchmark = Callable[[Server, Path, argparse.Namespace], list[Row]]

BENCHMARKS: dict[str, Benchmark] = {
    small_files.NAME: lambda server, work, options: small_files.run(
        server, work, count=options.files, size=options.size, concurrency=options.concurrency
    ),
    backlog.NAME: lambda server, work, options: backlog.run(
        server, work, count=options.backlog_files, size=options.backlog_size, concurrency=options.concurrency
    ),
    large_file.NAME: lambda server, work, options: large_file.run(server, work, mebibytes=options.large_mib),
    pickup.NAME: lambda server, work, options: pickup.run(server, work, count=options.pickup_files),
    idle.NAME: lambda server, work, options: idle.run(server, work, seconds=options.idle_seconds),
    group.NAME: lambda server, work, options: group.run(
        server,
        work,
        rows=options.group_rows,
        workers=options.group_workers,
        files=options.group_files,
        size=options.size,
        concurrency=options.concurrency,
        held=options.group_held,
        failovers=options.group_failovers,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line; the defaults are the sizes of issue 10."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        type=_names,
        default=list(BENCHMARKS),
        metavar="NAME[,NAME...]",
        help=f"run only these, in the usual order ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--files", type=_positive, default=2000, help="small files: how many (default %(default)s)"
    )
    parser.add_argument(
        "--size", type=_positive, default=4096, help="small files and group: bytes each (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=_positive,
        default=8,
        help="small files, backlog and group, both sides (default %(default)s)",
    )
    parser.add_argument(
        "--backlog-files", type=_positive, default=20_000, help="backlog: how many (default %(default)s)"
    )
    parser.add_argument(
        "--backlog-size", type=_positive, default=1024, help="backlog: bytes each (default %(default)s)"
    )
    parser.add_argument(
        "--large-mib", type=_positive, default=1024, help="large file: MiB (default %(default)s)"
    )
    parser.add_argument(
        "--pickup-files", type=_positive, default=200, help="pickup: how many (default %(default)s)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=20.0, help="idle: how long to watch (default %(default)s)"
    )
    parser.add_argument(
        "--group-rows",
        type=_positive,
        default=5000,
        help="group: journal rows to claim (default %(default)s)",
    )
    parser.add_argument(
        "--group-workers",
        type=_positive,
        default=8,
        help="group: claiming coroutines per node (default %(default)s)",
    )
    parser.add_argument(
        "--group-files",
        type=_positive,
        default=1000,
        help="group: small files per journal and per pair of daemons (default %(default)s)",
    )
    parser.add_argument(
        "--group-held",
        type=_positive,
        default=4,
        help="group: files the killed node holds at kill -9 (default %(default)s)",
    )
    parser.add_argument(
        "--group-failovers", type=_positive, default=3, help="group: kill -9 runs (default %(default)s)"
    )
    parser.add_argument(
        "--server-storage",
        type=Path,
        default=_default_server_storage(),
        help="where the emulator stores what it receives (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--strict", action="store_true", help="exit with 1 when a goal is missed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; print the table (or JSON); return 0 (1 for a missed goal with --strict)."""
    options = build_parser().parse_args(argv)
    chosen = [name for name in BENCHMARKS if name in options.only]
    started, rows = time.monotonic(), []
    with (
        tempfile.TemporaryDirectory(prefix="uploader-bench-") as temporary,
        tempfile.TemporaryDirectory(prefix="uploader-bench-server-", dir=options.server_storage) as storage,
    ):
        root = Path(temporary)
        with running_server(Path(storage) / "server") as server:
            for name in chosen:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                rows.extend(BENCHMARKS[name](server, root / name, options))
    machine = _machine(time.monotonic() - started, options.server_storage)
    if options.json:
        print(json.dumps({"machine": machine, "rows": [row.as_json() for row in rows]}, indent=2))
    else:
        print(", ".join(f"{key}: {value}" for key, value in machine.items()))
        print(table(rows))
        print()
        print(details(rows))
    return 1 if options.strict and not all(row.met for row in rows) else 0


def _machine(seconds: float, server_storage: Path) -> dict[str, object]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": _cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "suite_seconds": round(seconds, 1),
        "server_storage": str(server_storage),
    }


def _default_server_storage() -> Path:
    shared_memory = Path("/dev/shm")
    if shared_memory.is_dir() and os.access(shared_memory, os.W_OK):
        return shared_memory
    return Path(tempfile.gettempdir())


def _cpu_count() -> int:
    # The CPUs this process may run on, which is what the peers share (nproc's answer).
    return len(os.sched_getaffinity(0))


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown) or '(none given)'}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
