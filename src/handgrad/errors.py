"""The error a setting that cannot work raises, before or during training.

Every ConfigError's message is one line that names the value and the fix, e.g.
``model.lr=0.0 must be > 0; use e.g. --model.lr 0.1``; the command line (handgrad.cli)
prints it as "error: ..." and exits with status 2, without a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line naming the value and the fix."""
