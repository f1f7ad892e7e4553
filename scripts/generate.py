"""Sample text from a handgrad language model's checkpoint, or score an addition model on its test problems.

    python scripts/generate.py logs/gpt_chars/version_0/checkpoints/last.ckpt --prompt "The " --length 300
    python scripts/generate.py logs/gpt_addition/version_0/checkpoints/last.ckpt --accuracy

The command line of handgrad.sampling (--help for its options); installed, the same command is
``handgrad-generate``.
"""

import sys

from handgrad.sampling import main

if __name__ == "__main__":
    sys.exit(main())
