"""Training-step time and memory, hand-written against autograd, and Lightning's share of an epoch:
the command line of handgrad.benchmarks.suite (``python scripts/benchmark.py --help``).

    python scripts/benchmark.py --quick         # a smoke run of a few seconds
    python scripts/benchmark.py --threads 1 --clock cpu --breakdown --data-root data   # docs/performance.md
"""

import sys

from handgrad.benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
