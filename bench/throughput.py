"""Throughput: the daemon vs a bare async httpx client, against the same local server.

    .venv/bin/python bench/throughput.py [--files 1000] [--size 1000] [--concurrency 8]

See ``bench/harness.py`` for what is timed. ``BENCH_PROFILE="-m cProfile -o out.prof"``
runs the daemon under a profiler.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import bare_client, daemon, running_emulator


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1000, help="bytes per file")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    count, size, concurrency = arguments.files, arguments.size, arguments.concurrency
    with tempfile.TemporaryDirectory(prefix="uploader-bench-") as temporary:
        root = Path(temporary)
        with running_emulator(root / "server") as url:
            bare = bare_client(url, root / "bare", count, size, concurrency)
            options = os.environ.get("BENCH_PROFILE", "").split()
            ours = daemon(url, root / "daemon", count, size, concurrency, python_options=options)
    result = {
        "files": count,
        "size": size,
        "concurrency": concurrency,
        "bare_seconds": round(bare.seconds, 3),
        "daemon_seconds": round(ours.seconds, 3),
        "bare_files_per_second": round(count / bare.seconds, 1),
        "daemon_files_per_second": round(count / ours.seconds, 1),
        "ratio": round(ours.seconds / bare.seconds, 2),
        "bare_cpu_ms_per_file": round(1000 * bare.cpu_seconds / count, 2),
        "daemon_cpu_ms_per_file": round(1000 * ours.cpu_seconds / count, 2),
    }
    print(json.dumps(result) if arguments.json else "\n".join(f"{k:>24}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
