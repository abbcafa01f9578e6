"""GPU benchmarks (bench/RESULTS.md); each script also has a CPU smoke mode (--tiny) that the tests run."""
