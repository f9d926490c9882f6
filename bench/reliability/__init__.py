"""Reliability probes against the real CLI (`python -m bench.reliability.run`)."""
