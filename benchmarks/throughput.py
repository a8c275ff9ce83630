"""Whole-slide inference throughput, open time and peak memory (see lpd.bench.throughput).

Same code and options as ``lpd bench throughput``::

    python benchmarks/throughput.py --json throughput.json
"""

import os
import sys

# OpenMP reads this when torch loads: passive waiting keeps torch's threads from spinning
# on shared cores (measured: 2 torch threads 1.2 -> 6 passes/s under load). Set it in the
# environment yourself to compare: OMP_WAIT_POLICY=ACTIVE python benchmarks/throughput.py
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lpd.bench.throughput_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
