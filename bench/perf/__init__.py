"""Speed and memory benchmarks (`python -m bench.perf.<name>`)."""
