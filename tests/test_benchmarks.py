"""The three benchmarks in --quick mode, each once, as a user would run them: they finish, print their
table and write JSON whose figures are complete and plausible. (Speed itself is measured, not asserted.)"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_bench_data_quick_reports_load_times_memory_and_throughput(tmp_path):
    out = tmp_path / "data.json"
    result = run_benchmark("bench_data.py", "--workdir", tmp_path / "work", "--out", out)
    report = json.loads(out.read_text())
    first, second = report["first_start"], report["second_start"]
    assert first["samples"] == second["samples"] > 0 and first["raw_bytes"] == second["raw_bytes"] > 0
    assert 0 < second["seconds"] and 0 < second["peak_rss"] and first["packer_peak_rss"] > 0
    assert second["packer_peak_rss"] == 0  # the second start reads the cache: no parsing process
    assert set(report["loader_samples_per_s"]) == {"0", "1", "2"}
    assert all(v > 0 for v in report["loader_samples_per_s"].values())
    assert report["getitem_ms"]["train"] > 0 and report["getitem_ms"]["test"] > 0
    assert "second start: ready" in result.stdout and "DataLoader, 2 workers" in result.stdout


def test_bench_train_quick_reports_steps_flops_peak_and_memory(tmp_path):
    out = tmp_path / "train.json"
    result = run_benchmark("bench_train.py", "--out", out)
    report = json.loads(out.read_text())
    assert report["matmul_peak_gflops"] > 0
    runs = {run["setup"]: run for run in report["runs"]}
    whole, micro = runs["published size, T=32, whole batch"], runs["published size, T=32, micro-batches of 1"]
    assert whole["micro_batch"] == whole["batch"] == 4 and micro["micro_batch"] == 1
    assert whole["step_gflop"] == micro["step_gflop"] > 0  # the recomputation is not useful work
    for run in report["runs"]:
        assert run["step_seconds"] > 0 and run["peak_memory_bytes"] > 0
        assert run["share_of_peak"] == run["achieved_gflops"] / report["matmul_peak_gflops"]
        assert run["samples_per_second"] == run["batch"] / run["step_seconds"]
    assert "% of the matmul peak" in result.stdout


def test_bench_infer_quick_times_eager_and_both_onnx_models(tmp_path):
    out = tmp_path / "infer.json"
    result = run_benchmark("bench_infer.py", "--threads", 1, "--out", out)
    report = json.loads(out.read_text())
    assert report["machine"]["threads"] == 1 and report["frames"] == 32
    assert set(report["ms"]) == {"pytorch_eager", "onnxruntime_fp32", "onnxruntime_int8"}
    for engine in report["ms"].values():
        assert set(engine) == {"1", "2"} and all(ms > 0 for ms in engine.values())
    assert set(report["eager_alone"]) == {"default", "keep"}  # fresh processes, glibc's malloc policy or ours
    for figures in report["eager_alone"].values():
        assert set(figures) == {"1", "2"} and all(run["ms"] > 0 and run["page_faults"] >= 0 for run in figures.values())
    assert "ONNX Runtime int8" in result.stdout
