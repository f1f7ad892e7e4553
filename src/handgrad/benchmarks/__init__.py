"""Benchmarks: handgrad against its torch twins, timed in one process with the contenders taking turns."""
