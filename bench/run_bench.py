"""Latency, throughput and memory of edged beside raw mlx-lm: the same code as ``edged bench``.

    .venv/bin/python bench/run_bench.py [--model smollm2] [--requests 10] [--json out.json] ...
"""

from __future__ import annotations

import argparse
import os
import sys

from edged.bench.run import add_arguments, run
from edged.logs import setup_logging

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging("info", "console", stream=sys.stderr)
    sys.exit(run(parser.parse_args()))
