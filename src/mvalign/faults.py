"""Fault injection for the reliability suite (`tests/test_faults.py`): off unless MVALIGN_FAULT is set.

MVALIGN_FAULT=<marker>[@<n>] kills the process with SIGKILL (as the OOM killer or a power cut would: no cleanup,
no `finally`) the n-th time (default: the first) it reaches `reached(<marker>)`; several, comma-separated, each
count on their own. The markers are the phase
boundaries a resumed run must survive:

  reference   training: the objective is built (reference log-probs computed and cached), no step taken
  step        training: after an optimizer step is logged (and checkpointed when `save_every` says so)
  trained     training: the last checkpoint is written, the adapter not yet saved
  adapter     training: the adapter folder is in place, its store record not yet written
  vector      training: the store record is written
  point       evaluation: after a point (one weight vector on one split) is stored
  task        Ray sweep: a worker is about to generate a task (reaches worker 0 only; mvalign.scaleout)
  load        Ray sweep: a replacement worker is loading the model (reaches replacements only)
  front       evaluation: after front-<method>.json is written
"""

from __future__ import annotations

import os
import signal
from collections import Counter

MARKERS = ("reference", "step", "trained", "adapter", "vector", "point", "front", "task", "load")
_seen: Counter[str] = Counter()


def reached(marker: str) -> None:
    """Die here when MVALIGN_FAULT asks for this marker (and this is its n-th visit)."""
    for spec in os.environ.get("MVALIGN_FAULT", "").split(","):
        name, _, nth = spec.strip().partition("@")
        if name != marker:
            continue
        _seen[marker] += 1
        if _seen[marker] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
