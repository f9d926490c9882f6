"""The quality benchmark: every method, matched budgets, several seeds (`python -m bench.quality.run`)."""
