"""Helpers shared by the benchmark scripts."""
import json
import statistics
import time
from pathlib import Path


def timed_runs(fn, repeats: int) -> list[float]:
    """Wall times of `repeats` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of fn, after one warm-up call."""
    return statistics.median(timed_runs(fn, repeats))


def write_result(result: dict, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
