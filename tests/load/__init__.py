"""Load and throughput benchmarks: run as modules (`python -m tests.load.<name>`), never collected by pytest."""
