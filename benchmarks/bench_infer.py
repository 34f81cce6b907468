"""Inference benchmark on the CPU: PyTorch eager against ONNX Runtime (fp32, and int8 Linear layers), and
PyTorch eager on the whole batch against micro-batches for batches of 1 to 16 clips.

    python benchmarks/bench_infer.py [--quick] [--batch 1 8] [--rounds 3] [--repeats 3] [--threads N]
                                     [--batches 1 2 4 8 16] [--micro 1 2 4] [--out benchmarks/results/infer.json]

Random weights at the published size (C=128, depth 6), 2-person clips of clip_len frames (243), eval
mode.

Engines (--batch): PyTorch runs under no_grad with the backbone micro-batches that evaluation uses on the
CPU (lib.engine.runtime.micro_batch_size); ONNX Runtime runs the models written by lib.deploy.export with
the session options of deployment/infer_action.py (graph optimisation ORT_ENABLE_ALL, --threads intra-op
threads). The three engines take turns: each round runs every engine once to warm up and then --repeats
times, with a pause between engines, so that a slower or faster spell of a shared machine reaches all of
them; the table shows the median over the rounds.

PyTorch eager also runs alone in fresh processes (--batch), with glibc's default malloc and with
lib.engine.runtime.keep_freed_memory (which evaluation and training call), counting page faults: in this
process the ONNX Runtime sessions allocated on top of the heap hide the difference.

Micro-batches (--batches, --micro): PyTorch eager under no_grad with keep_freed_memory, as evaluation runs,
each setup in a fresh process: the whole batch in one backbone pass, and micro-batches of each --micro
size smaller than the batch (`ActionNet.set_micro_batch`); one warm-up pass, then the median of --repeats
passes, the minor page faults per pass and the process's peak RSS.

Each fresh process records the load averages at its start and end and the CPU seconds other processes
used meanwhile. A full run first waits for an idle machine and holds /tmp/BENCH_RUNNING while it runs
(benchmarks/common.py). --quick: 32-frame clips, batches 1 and 2, micro-batches of 1, one round, one
timed run (a smoke run); it writes JSON only to --out.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (idle_machine, machine_info, machine_load, minor_faults, out_path,  # noqa: E402
                               peak_rss_bytes, timed_runs, write_result)
from lib.config import load_yaml_config  # noqa: E402
from lib.deploy.export import export_onnx  # noqa: E402
from lib.deploy.inference import OnnxActionModel  # noqa: E402
from lib.engine.build import action_model  # noqa: E402
from lib.engine.runtime import keep_freed_memory, micro_batch_size  # noqa: E402


def build(args, micro_batch: int = None):
    """The config and a model in eval mode on `micro_batch` clips at a time (None: evaluation's choice)."""
    cfg = load_yaml_config(args.config, args.hyper_cfg, overrides=["clip_len=32", "maxlen=32"] if args.quick else [])
    torch.manual_seed(0)
    clips = micro_batch_size(cfg, torch.device("cpu")) if micro_batch is None else micro_batch
    return cfg, action_model(cfg).set_micro_batch(clips).eval()


def fresh_process(args, *internal: str) -> dict:
    """Run this script's internal mode `internal` in a fresh process; its JSON line, with the machine's load."""
    command = [sys.executable, __file__, *internal, "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--config", args.config, "--hyper_cfg", args.hyper_cfg]
    load = {}
    with machine_load(load):
        out = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(internal)} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), **load}


def eager_alone(args, batch: int, malloc: str) -> dict:
    """PyTorch eager on `batch` clips in a fresh process ('default' or 'keep' malloc): median ms and minor
    page faults per run."""
    return fresh_process(args, "--eager-alone", malloc, "--batch", str(batch))


def time_eager_alone(args, malloc: str):
    if malloc == "keep":
        keep_freed_memory()
    cfg, model = build(args)
    x = torch.randn(args.batch[0], 2, cfg.data.clip_len, 17, 3)
    with torch.no_grad():
        model(x)
        faults = minor_faults()
        times = timed_runs(lambda: model(x), args.repeats)
        faults = minor_faults() - faults
    print(json.dumps({"ms": statistics.median(times) * 1000, "page_faults": faults / (args.repeats + 1)}))


def time_eager_setup(args, batch: int, clips: int):
    """One micro-batch setup in this fresh process: `batch` clips, `clips` per backbone pass (0: whole)."""
    keep_freed_memory()  # as in evaluate_action.py
    cfg, model = build(args, clips)
    x = torch.randn(batch, 2, cfg.data.clip_len, 17, 3)
    with torch.no_grad():
        model(x)  # warm-up
        faults = minor_faults()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        faults = minor_faults() - faults
    ms = statistics.median(times) * 1000
    print(json.dumps({"batch": batch, "micro_batch": clips if 0 < clips < batch else batch, "ms": ms,
                      "ms_each": [t * 1000 for t in times], "samples_per_second": batch / ms * 1000,
                      "page_faults": faults / args.repeats, "peak_rss_bytes": peak_rss_bytes()}))


def micro_setups(batches: list[int], micro: list[int]) -> list[tuple[int, int]]:
    """(batch, clips per backbone pass) for the micro-batch table; 0 clips: the whole batch."""
    return [(batch, clips) for batch in batches for clips in [0] + [c for c in micro if c < batch]]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/action/train_NTU60_xsub_small.yaml"))
    p.add_argument("--hyper_cfg", default=str(ROOT / "hyper_config/method2/manual_joint_label1.yaml"))
    p.add_argument("--quick", action="store_true", help="32-frame clips, batches 1 and 2, one round")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes of the engine comparison and the malloc comparison (default 1 8)")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes of the micro-batch table (default 1 2 4 8 16; 1 2 with --quick)")
    p.add_argument("--micro", type=int, nargs="+", default=None,
                   help="micro-batch sizes compared with the whole batch (default 1 2 4; 1 with --quick)")
    p.add_argument("--parts", nargs="+", choices=["engines", "micro"], default=["engines", "micro"],
                   help="what to run: the engine and malloc comparisons, the micro-batch table (default both)")
    p.add_argument("--rounds", type=int, default=None, help="turns of the three engines (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine and round, and per micro-batch setup")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of PyTorch and ONNX Runtime")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default benchmarks/results/infer.json; --quick writes only where --out says)")
    p.add_argument("--eager-alone", choices=["default", "keep"], help=argparse.SUPPRESS)  # internal: one fresh process
    p.add_argument("--eager-setup", type=int, nargs=2, help=argparse.SUPPRESS)  # internal: batch, clips
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    torch.set_num_threads(args.threads)
    if args.eager_alone:
        return time_eager_alone(args, args.eager_alone)
    if args.eager_setup:
        return time_eager_setup(args, *args.eager_setup)
    batches = args.batch or ([1, 2] if args.quick else [1, 8])
    rounds = args.rounds or (1 if args.quick else 3)
    micro = args.micro if args.micro is not None else ([1] if args.quick else [1, 2, 4])
    table = micro_setups(args.batches or ([1, 2] if args.quick else [1, 2, 4, 8, 16]), micro) \
        if "micro" in args.parts else []
    out = out_path(args.out, args.quick, "infer.json")
    result = {"command": " ".join(["python", "benchmarks/bench_infer.py"] + sys.argv[1:]), "run": {}}
    with contextlib.ExitStack() as stack:
        if not args.quick:
            stack.enter_context(idle_machine(result["run"]))
        cfg = load_yaml_config(args.config, args.hyper_cfg, overrides=["clip_len=32", "maxlen=32"] if args.quick else [])
        result.update({"machine": machine_info(threads=args.threads), "config": Path(args.config).name,
                       "frames": cfg.data.clip_len, "persons": 2, "repeats": args.repeats})
        if "engines" in args.parts:
            engines_and_alone(args, batches, rounds, result)
        if table:
            print(f"PyTorch eager under no_grad, whole batch against micro-batches, each setup in a fresh process; "
                  f"median of {args.repeats} passes after a warm-up pass", flush=True)
            result["micro_batch"] = []
        for batch, clips in table:
            run = fresh_process(args, "--eager-setup", str(batch), str(clips))
            result["micro_batch"].append(run)
            chunks = f"micro-batches of {run['micro_batch']}" if run["micro_batch"] < batch else "whole batch"
            print(f"  batch {batch:2d}, {chunks:<19}: {run['ms']:9.1f} ms a pass, {run['samples_per_second']:5.2f} "
                  f"samples/s, {run['page_faults']:9,.0f} page faults a pass, peak RSS "
                  f"{run['peak_rss_bytes'] / 2**30:.2f} GiB; load {run['load_average_start'][0]:.2f} -> "
                  f"{run['load_average_end'][0]:.2f}, other processes {run['other_cpu_seconds']:.1f} CPU s", flush=True)
    write_result(result, out)


def engines_and_alone(args, batches: list[int], rounds: int, result: dict):
    """The engine comparison (in this process) and PyTorch eager alone with either malloc policy."""
    keep_freed_memory()  # as in evaluate_action.py
    cfg, model = build(args)
    frames = cfg.data.clip_len
    engines = {"pytorch_eager": None, "onnxruntime_fp32": None, "onnxruntime_int8": None}
    with tempfile.TemporaryDirectory() as folder:
        for name, quantize in (("onnxruntime_fp32", "none"), ("onnxruntime_int8", "int8")):
            path = Path(folder) / f"{name}.onnx"
            export_onnx(model, cfg, [str(k) for k in range(cfg.data.action_classes)], path, quantize=quantize)
            engines[name] = OnnxActionModel(path, args.threads).session
    result.update({"rounds": rounds, "eager_micro_batch": model.micro_batch, "session_options": "ORT_ENABLE_ALL, intra_op_num_threads", "ms": {name: {} for name in engines},
                   "engines_load": {}, "eager_alone": {"default": {}, "keep": {}}})
    print(f"{Path(args.config).name}: C={cfg.model.dim_rep}, depth {cfg.model.depth}, T={frames}, 2 persons; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads; "
          f"median of {rounds} rounds x {args.repeats} runs", flush=True)
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, 2, frames, 17, 3)
            run = {"pytorch_eager": lambda: model(x),
                   "onnxruntime_fp32": lambda: engines["onnxruntime_fp32"].run(None, {"pose2d": x.numpy()}),
                   "onnxruntime_int8": lambda: engines["onnxruntime_int8"].run(None, {"pose2d": x.numpy()})}
            times = {name: [] for name in run}
            load = result["engines_load"][str(batch)] = {}
            with machine_load(load):
                for _ in range(rounds):
                    for name, fn in run.items():
                        time.sleep(0.3)  # let the other engine's threads go idle
                        times[name] += timed_runs(fn, args.repeats)
            ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
            for name, value in ms.items():
                result["ms"][name][str(batch)] = value
            eager = ms["pytorch_eager"]
            print(f"  batch {batch}: PyTorch eager {eager:8.1f} ms | ONNX Runtime fp32 {ms['onnxruntime_fp32']:8.1f} ms "
                  f"({eager / ms['onnxruntime_fp32']:.2f}x eager) | ONNX Runtime int8 {ms['onnxruntime_int8']:8.1f} ms "
                  f"({eager / ms['onnxruntime_int8']:.2f}x eager); load {load['load_average_start'][0]:.2f} -> "
                  f"{load['load_average_end'][0]:.2f}, other processes {load['other_cpu_seconds']:.1f} CPU s", flush=True)
    del model, engines
    for batch in batches:
        alone = {malloc: eager_alone(args, batch, malloc) for malloc in ("default", "keep")}
        for malloc, figures in alone.items():
            result["eager_alone"][malloc][str(batch)] = figures
        print(f"  batch {batch}, PyTorch eager alone in a fresh process: glibc's default malloc "
              f"{alone['default']['ms']:8.1f} ms ({alone['default']['page_faults']:,.0f} page faults a run) | "
              f"keep_freed_memory {alone['keep']['ms']:8.1f} ms ({alone['keep']['page_faults']:,.0f})", flush=True)


if __name__ == "__main__":
    main()
