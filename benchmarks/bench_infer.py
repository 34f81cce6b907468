"""Inference benchmark: PyTorch eager against ONNX Runtime (fp32, and int8 Linear layers) on the CPU.

    python benchmarks/bench_infer.py [--quick] [--batch 1 8] [--rounds 3] [--repeats 3] [--threads N]
                                     [--out benchmarks/results/infer.json]

Random weights at the published size (C=128, depth 6), 2-person clips of clip_len frames (243), eval
mode. PyTorch runs under no_grad with the backbone micro-batches that evaluation uses on the CPU; ONNX
Runtime runs the models written by lib.deploy.export with the session options of
deployment/infer_action.py (graph optimisation ORT_ENABLE_ALL, --threads intra-op threads). The three
engines take turns: each round runs every engine once to warm up and then --repeats times, with a pause
between engines, so that a slower or faster spell of a shared machine reaches all of them; the table
shows the median over the rounds. --quick: 32-frame clips, batches 1 and 2, one round (a smoke run).

PyTorch eager also runs alone in fresh processes, with glibc's default malloc and with
lib.engine.runtime.keep_freed_memory (which evaluation and training call), counting page faults: in this
process the ONNX Runtime sessions allocated on top of the heap hide the difference.
"""
import argparse
import json
import os
import platform
import resource
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

from benchmarks.common import timed_runs, write_result  # noqa: E402
from lib.config import load_yaml_config  # noqa: E402
from lib.deploy.export import export_onnx  # noqa: E402
from lib.deploy.inference import OnnxActionModel  # noqa: E402
from lib.engine.runtime import keep_freed_memory, micro_batch_size  # noqa: E402
from lib.model.action import build_model  # noqa: E402


def build(args):
    cfg = load_yaml_config(args.config, args.hyper_cfg, overrides=["clip_len=32", "maxlen=32"] if args.quick else [])
    torch.manual_seed(0)
    return cfg, build_model(cfg, micro_batch_size(cfg, torch.device("cpu"))).eval()


def eager_alone(args, batch: int, malloc: str) -> dict:
    """PyTorch eager on `batch` clips in a fresh process ('default' or 'keep' malloc): median ms and minor
    page faults per run."""
    command = [sys.executable, __file__, "--eager-alone", malloc, "--batch", str(batch), "--threads",
               str(args.threads), "--repeats", str(args.repeats), "--config", args.config, "--hyper_cfg", args.hyper_cfg]
    out = subprocess.run(command + (["--quick"] if args.quick else []), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_eager_alone(args, malloc: str):
    if malloc == "keep":
        keep_freed_memory()
    cfg, model = build(args)
    x = torch.randn(args.batch[0], 2, cfg.data.clip_len, 17, 3)
    with torch.no_grad():
        model(x)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = timed_runs(lambda: model(x), args.repeats)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"ms": statistics.median(times) * 1000, "page_faults": faults / (args.repeats + 1)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/action/train_NTU60_xsub_small.yaml"))
    p.add_argument("--hyper_cfg", default=str(ROOT / "hyper_config/method2/manual_joint_label1.yaml"))
    p.add_argument("--quick", action="store_true", help="32-frame clips, batches 1 and 2, one round")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    p.add_argument("--rounds", type=int, default=None, help="turns of the three engines (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine and round")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of PyTorch and ONNX Runtime")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/infer.json")
    p.add_argument("--eager-alone", choices=["default", "keep"], help=argparse.SUPPRESS)  # internal: one fresh process
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    torch.set_num_threads(args.threads)
    if args.eager_alone:
        return time_eager_alone(args, args.eager_alone)
    batches = args.batch or ([1, 2] if args.quick else [1, 8])
    rounds = args.rounds or (1 if args.quick else 3)
    keep_freed_memory()  # as in evaluate_action.py
    cfg, model = build(args)
    frames = cfg.data.clip_len
    engines = {"pytorch_eager": None, "onnxruntime_fp32": None, "onnxruntime_int8": None}
    with tempfile.TemporaryDirectory() as folder:
        for name, quantize in (("onnxruntime_fp32", "none"), ("onnxruntime_int8", "int8")):
            path = Path(folder) / f"{name}.onnx"
            export_onnx(model, cfg, [str(k) for k in range(cfg.data.action_classes)], path, quantize=quantize)
            engines[name] = OnnxActionModel(path, args.threads).session
    result = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                          "onnxruntime": onnxruntime.__version__, "platform": platform.platform()},
              "config": Path(args.config).name, "frames": frames, "persons": 2, "rounds": rounds, "repeats": args.repeats,
              "eager_micro_batch": model.micro_batch, "session_options": "ORT_ENABLE_ALL, intra_op_num_threads",
              "ms": {name: {} for name in engines}, "eager_alone": {"default": {}, "keep": {}}}
    print(f"{Path(args.config).name}: C={cfg.model.dim_rep}, depth {cfg.model.depth}, T={frames}, 2 persons; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads; "
          f"median of {rounds} rounds x {args.repeats} runs")
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, 2, frames, 17, 3)
            run = {"pytorch_eager": lambda: model(x),
                   "onnxruntime_fp32": lambda: engines["onnxruntime_fp32"].run(None, {"pose2d": x.numpy()}),
                   "onnxruntime_int8": lambda: engines["onnxruntime_int8"].run(None, {"pose2d": x.numpy()})}
            times = {name: [] for name in run}
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
                  f"({eager / ms['onnxruntime_int8']:.2f}x eager)")
    for batch in batches:
        alone = {malloc: eager_alone(args, batch, malloc) for malloc in ("default", "keep")}
        for malloc, figures in alone.items():
            result["eager_alone"][malloc][str(batch)] = figures
        print(f"  batch {batch}, PyTorch eager alone in a fresh process: glibc's default malloc "
              f"{alone['default']['ms']:8.1f} ms ({alone['default']['page_faults']:,.0f} page faults a run) | "
              f"keep_freed_memory {alone['keep']['ms']:8.1f} ms ({alone['keep']['page_faults']:,.0f})")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
