"""The benchmarks in --quick mode, as a user would run them: they finish, print their table and write
JSON (to an explicit --out) whose figures are complete and plausible; a --quick run without --out leaves the
recorded results in benchmarks/results/ alone. (Speed itself is measured, not asserted.)"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


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
    assert whole["micro_batch"] == whole["batch"] == 2 and micro["micro_batch"] == 1
    assert whole["step_gflop"] == micro["step_gflop"] > 0  # the recomputation is not useful work
    assert list(runs) == ["published size, T=32, whole batch", "published size, T=32, micro-batches of 1", "demo"]
    assert whole["frames"] == micro["frames"] == 32
    for run in report["runs"]:
        for key in ("step_seconds", "samples_per_second", "achieved_gflops", "share_of_peak", "peak_memory_bytes"):
            assert math.isfinite(run[key]) and run[key] > 0, (run["setup"], key, run[key])
        assert f"{run['setup']}: " in result.stdout  # each setup has its line in the printed table
    assert "% of the matmul peak" in result.stdout


def test_bench_infer_quick_times_eager_and_both_onnx_models(tmp_path):
    out = tmp_path / "infer.json"
    result = run_benchmark("bench_infer.py", "--threads", 1, "--parts", "engines", "--batch", 1, "--out", out)
    report = json.loads(out.read_text())
    assert report["machine"]["threads"] == 1 and report["frames"] == 32
    assert set(report["ms"]) == {"pytorch_eager", "onnxruntime_fp32", "onnxruntime_int8"}
    for engine in report["ms"].values():
        assert set(engine) == {"1"} and all(ms > 0 for ms in engine.values())
    assert set(report["eager_alone"]) == {"default", "keep"}  # fresh processes, glibc's malloc policy or ours
    for figures in report["eager_alone"].values():
        assert set(figures) == {"1"} and all(run["ms"] > 0 and run["page_faults"] >= 0 for run in figures.values())
    assert "micro_batch" not in report  # --parts engines: no micro-batch table
    assert "ONNX Runtime int8" in result.stdout


def snapshot(folder: Path) -> dict:
    """Every file under folder: its bytes and modification time."""
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.rglob("*"))
            if path.is_file()}


def restore(folder: Path, before: dict):
    """Put folder back as snapshot() found it: the recorded results are not the test's to change."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path not in before and path.is_file():
            path.unlink()
        elif path not in before and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for path, (content, mtime_ns) in before.items():
        if not path.is_file() or path.read_bytes() != content or path.stat().st_mtime_ns != mtime_ns:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            os.utime(path, ns=(mtime_ns, mtime_ns))


def test_bench_gpu_quick_runs_every_section_it_can_on_the_cpu(tmp_path):
    """The GPU check's code on the CPU: a training step and a forward pass in fresh processes, the attention
    implementations, operator counts, the loader, two epochs of train_action.py and an exact resume."""
    out = tmp_path / "gpu.json"
    result = run_benchmark("bench_gpu.py", "--out", out)
    report = json.loads(out.read_text())
    runs = {run["setup"]: run for run in report["runs"]}
    assert {"train step, batch 2", "train step, batch 2, profiled", "inference, batch 2, eager"} <= set(runs)
    profile = runs["train step, batch 2, profiled"]["profile"]
    assert len(profile) == 15 and 0 < sum(entry["share"] for entry in profile) <= 1 + 1e-9
    assert any(entry["name"] == "aten::addmm" for entry in profile)  # the Linear layers, where CPU time goes
    attention = {(run["shape"], run["impl"]) for run in report["runs"] if run["kind"] == "attention"}
    assert attention == {(shape, impl) for shape in ("joint", "temporal") for impl in ("explicit", "sdpa")}
    for run in report["runs"]:
        assert "error" not in run, run
        assert len(run["times"]) == 1 and run["step_seconds"] > 0 and "speedup" not in run  # no GPU baseline here
        assert f"{run['setup']} " in result.stdout
    for what in ("forward", "train_step"):
        counts = report["operators"][what]
        assert counts["kernels"] > counts["copies"] > 0 and counts["top"]
    assert report["operators"]["train_step"]["kernels"] > report["operators"]["forward"]["kernels"]
    loader = report["loader"]
    assert loader["automatic_workers"] == 2 and all(rate > 0 for rate in loader["clips_per_second_by_workers"].values())
    epochs = report["commands"]["epochs of train_action.py"]
    assert epochs["returncode"] == 0 and epochs["epoch_seconds"] > 0 and epochs["train_clips"] > 0
    assert all(c["returncode"] == 0 for name, c in report["commands"].items() if name.startswith("resume"))
    assert report["resume_max_weight_difference"] == 0.0


def test_every_script_decides_where_to_write_in_one_place():
    """A smoke run (--quick) writes its JSON only where --out says; a full run defaults to results/."""
    from benchmarks.common import RESULTS as DEFAULT_FOLDER, out_path

    assert out_path(None, quick=True, default="train.json") is None
    assert out_path(None, quick=False, default="train.json") == DEFAULT_FOLDER / "train.json"
    assert out_path(Path("x.json"), quick=True, default="train.json") == Path("x.json")
    for script in ("bench_data.py", "bench_train.py", "bench_infer.py", "bench_gpu.py"):
        source = (ROOT / "benchmarks" / script).read_text()
        assert "out_path(" in source and "RESULTS /" not in source, script


def test_quick_run_without_out_leaves_the_recorded_results_alone(tmp_path):
    """The real thing, with the cheapest script: without --out a --quick run writes nothing, so the results
    in benchmarks/results/ stay those of the full runs."""
    pytest.importorskip("cv2")
    script = "bench_video.py"
    before = snapshot(RESULTS)
    try:
        run_benchmark(script, "--yolo-model", tmp_path / "absent.onnx")
        after = snapshot(RESULTS)
    finally:
        restore(RESULTS, before)
    changed = sorted(str(p.relative_to(ROOT)) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"{script} --quick without --out changed {changed}"


def test_bench_pretrain_quick_compares_the_three_protocols_and_times_pretraining(tmp_path):
    out = tmp_path / "pretrain.json"
    result = run_benchmark("bench_pretrain.py", "--work", tmp_path / "work", "--out", out)
    report = json.loads(out.read_text())
    comparison = report["comparison"]
    runs = comparison["runs"]
    assert [(r["method"], r["label_fraction"], r["seed"]) for r in runs] == [
        ("scratch", 0.5, 0), ("probe", 0.5, 0), ("finetuned", 0.5, 0)]
    assert all(0 <= r["top1_last"] <= r["top1_best"] <= 100 for r in runs)
    assert all(r["top1_by_epoch"] == [r["top1_last"]] for r in runs)  # one epoch
    assert all(set(row["top1_mean_after"]) == {"1"} for row in comparison["table"])
    assert [row["method"] for row in comparison["table"]] == ["scratch", "probe", "finetuned"]
    assert set(comparison["pretrain_curve"][0]) == {"loss", "position_loss", "motion_loss"}
    # the probe's backbone is the pretrained one, untouched; the finetuned run started from it and moved
    pretrained = torch.load(tmp_path / "work" / "pretrain" / "backbone.bin", weights_only=True)["backbone"]
    probe = torch.load(tmp_path / "work" / "probe_0.5_seed0" / "latest_epoch.bin", weights_only=True)["model"]
    finetuned = torch.load(tmp_path / "work" / "finetuned_0.5_seed0" / "latest_epoch.bin", weights_only=True)["model"]
    assert all(torch.equal(probe[f"backbone.{k}"], v) for k, v in pretrained.items())
    assert not all(torch.equal(finetuned[f"backbone.{k}"], v) for k, v in pretrained.items())
    (throughput,) = report["throughput"]
    assert throughput["batch"] == 2 and throughput["frames"] == 32 and throughput["clips_per_second"] > 0
    assert "finetuned |" in result.stdout and "pretraining at T=32" in result.stdout


def test_bench_pretrain_targets_quick_reports_every_variant(tmp_path):
    out = tmp_path / "targets.json"
    result = run_benchmark("bench_pretrain_targets.py", "--work", tmp_path / "work", "--out", out)
    variants = json.loads(out.read_text())["variants"]
    assert [(v["target"], v["mask_ratio"]) for v in variants] == [("moves", 0.9), ("both", 0.9), ("moves", 0.1),
                                                                  ("moves", 0.0)]
    for v in variants:
        assert len(v["means"]["motion_loss"]) == 2 and all(math.isfinite(x) and x > 0 for x in v["means"]["motion_loss"])
    assert set(variants[1]["means"]) == {"position_loss", "motion_loss"} and set(variants[0]["means"]) == {"motion_loss"}
    assert "both  hidden  90%  position_loss" in result.stdout


def test_bench_video_quick_reports_extraction_and_streaming(tmp_path):
    """The stand-in backend only (no yolo model given): extraction frames/s and per-window latency."""
    pytest.importorskip("cv2")
    out = tmp_path / "video.json"
    result = run_benchmark("bench_video.py", "--yolo-model", tmp_path / "absent.onnx", "--out", out)
    backends = json.loads(out.read_text())["backends"]
    stand_in = backends["stand-in"]
    assert stand_in["extraction"]["frames"] > 0 and stand_in["extraction"]["frames_per_second"] > 0
    assert stand_in["extraction"]["persons_per_frame"] > 0
    streaming = stand_in["streaming"]
    assert streaming["windows"] == (stand_in["extraction"]["frames"] - 16) // 8 + 1  # window 16, stride 8
    assert streaming["latency_ms_p90"] >= streaming["latency_ms_median"] >= streaming["model_ms_median"] > 0
    assert backends["yolo"] == {"measured": False, "why": f"no {tmp_path / 'absent.onnx'} (make yolo-pose)"}
    assert backends["rtmlib"]["measured"] is False
    assert "stand-in  extraction" in result.stdout
    per_person = json.loads(out.read_text())["per_person"]
    assert [row["persons"] for row in per_person] == [1, 2, 4, 8]
    assert all(row["batched_ms"] > 0 and row["one_call_each_ms"] > 0 for row in per_person)
    assert per_person[-1]["batched_ms"] > per_person[0]["batched_ms"]  # 8 persons cost more than 1


def test_bench_fewshot_quick_compares_the_three_features_and_times_a_gallery(tmp_path):
    """The few-shot benchmark with a tinier model than its --quick default (the suite's time): both real
    trainings, the three feature sets at 1 and 5 shots, the gallery timed with PyTorch and ONNX Runtime."""
    out = tmp_path / "fewshot.json"
    tiny = [arg for s in ("clip_len=8", "maxlen=8", "dim_rep=16", "depth=1", "num_heads=2", "hidden_dim=32",
                          "embed_dim=16") for arg in ("--set", s)]
    result = run_benchmark("bench_fewshot.py", "--work", tmp_path / "work", "--out", out, *tiny)
    report = json.loads(out.read_text())
    assert report["chance_top1"] == 5.0 and report["settings"]["split_sizes"]["oneshot_test"] > 0
    assert set(report["results"]) == {"embedding", "classifier", "raw"}
    for name, features in report["results"].items():
        assert features["classes"] == 20 and features["one_shot_named"]["queries"] == features["clips"] - 20
        assert 0 <= features["one_shot_named"]["top1"] <= 100
        assert set(features["k_shot"]) == {"1", "5"}
        assert all(len(k["draws"]) == 3 and 0 <= k["mean"] <= 100 for k in features["k_shot"].values())
    assert report["results"]["embedding"]["dim"] == 16 and report["results"]["raw"]["dim"] == 2 * 8 * 17 * 3
    engines = {g["engine"]: g for g in report["gallery"]}
    assert set(engines) == {"pytorch_cpu", "onnxruntime_cpu"}
    assert all(g["warm_ms_per_example"] > 0 and g["examples"] == 40 for g in engines.values())
    assert engines["onnxruntime_cpu"]["max_abs_difference_to_pytorch"] < 1e-4
    assert "(a) embedding model" in result.stdout and "(c) raw keypoints" in result.stdout


def test_bench_faults_quick_kills_ranks_and_reports_recovery_checkpoint_cost_and_loader_starts(tmp_path):
    out = tmp_path / "faults.json"
    result = run_benchmark("bench_faults.py", "--work", tmp_path / "work", "--out", out)
    report = json.loads(out.read_text())
    trials = report["trials"]
    assert len(trials) == 2 and any(t["killed"] for t in trials)
    for trial in trials:  # every run ended with the uninterrupted weights; a killed one after torchrun restarted it
        assert trial["finished"] and not trial["hung"] and trial["max_abs_difference"] == 0.0, trial
        if trial["killed"]:
            assert trial["restarts"] >= 1 and 0 <= trial["work_lost_s"] < 60 * report["trial_ckpt_every_minutes"] + 5
    assert report["summary"]["equal_weights"] == 2 and report["summary"]["hung"] == 0
    save = report["checkpoint_save"]
    assert save["parameters"] > 1_000_000 and save["file_bytes"] > 4 * save["parameters"] and save["seconds_median"] > 0
    assert set(report["loader_start"]) == {"fork", "forkserver"}
    assert all(r["pass_s_median"] >= r["first_batch_s_median"] > 0 for r in report["loader_start"].values())
    assert f"2 trials, {sum(t['killed'] for t in trials)} killed: 2 finished, 2 with the uninterrupted weights, 0 hung" \
        in result.stdout
