"""Train a handgrad network with Lightning, then test it: the command line of handgrad.cli.

    python scripts/train.py --help                              # handgrad's options and the config's values
    python scripts/train.py --config configs/nielsen_ch1.yaml   # or --config nielsen_ch1

Installed, the same command is ``handgrad-train``.
"""

import sys

from handgrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
