"""``python -m bench.inspect_data DIR [...]``: ``feedbench data inspect`` without the console script."""
import sys

from bench.inspect_data.cli import inspect_main

raise SystemExit(inspect_main(sys.argv[1:]))
