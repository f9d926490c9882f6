"""The one base class of every user-facing error.

Each error's message names the file, field or argument at fault and what to do; the CLI prints it as one line and
exits with status 1 (`--verbose` adds the traceback). Subclasses also derive from the built-in error they refine
(ValueError, RuntimeError), so code catching those keeps working.
"""

from __future__ import annotations


class MvalignError(Exception):
    """A problem the user can fix (bad config, data, adapters, model, reward model, run directory)."""
