"""mvalign's benchmarks, a package: run each script from the repository root as a module, e.g.
`.venv/bin/python -m bench.perf.racing` (see bench/README.md). Results go to bench/results/."""
