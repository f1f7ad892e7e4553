"""What the diagnostic callbacks cost a training run: the command line of handgrad.benchmarks.callback_cost.

    python scripts/callback_cost.py --data-root data               # four configs, 2 epochs each
    python scripts/callback_cost.py --configs spirals --epochs 1   # seconds, no data set needed
"""

import sys

from handgrad.benchmarks.callback_cost import main

if __name__ == "__main__":
    sys.exit(main())
