"""Training throughput: samples/s and peak memory of full training steps (forward, backward, AdamW) at the
published default size, with and without micro-batches, and at the demo size; the analytic FLOPs of a
step, this machine's fp32 matmul peak measured in the same run, and the share of that peak a step reaches.
Prints a table, writes JSON.

    python benchmarks/bench_train.py [--quick] [--steps 2] [--out benchmarks/results/train.json]

FLOPs: every Linear layer counted from its input size (2 * tokens * in * out), the attention products
(2 * 2 * groups * heads * Lq * Lk * d); a training step is counted as 3 forwards (backward = 2 forwards).
The recomputed forward of checkpointed micro-batches is not counted: the share of the peak is the
useful work. Each setup runs in its own process, so its peak RSS is its own. --quick: 32-frame clips,
batch 4, one measured step (a smoke run for the test suite).

With CUDA (--device cuda, the default where available) the published size runs three ways on the GPU:
fp32 with explicit attention (the published implementation's arithmetic: materialised score matrices),
bf16 autocast with fused attention, and the same compiled with torch.compile; the peak is then the
GPU's bf16 matmul, the memory torch's peak allocation.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import median_seconds, write_result  # noqa: E402
from lib.config import load_yaml_config  # noqa: E402
from lib.engine.runtime import keep_freed_memory, micro_batch_size  # noqa: E402
from lib.model.action import build_model  # noqa: E402
from lib.model.attention import JointToHyperedgeAttention, SelfAttention  # noqa: E402

DEFAULT = ROOT / "configs/action/train_NTU60_xsub_small.yaml"
DEMO = ROOT / "configs/action/demo_synthetic.yaml"
HYPER = ROOT / "hyper_config/method2/manual_joint_label1.yaml"


def setups(quick: bool, device: str) -> list[dict]:
    """name, config, batch, micro_batch (None: automatic), config overrides; on CUDA also amp, compile
    and explicit_attention."""
    if device == "cuda":
        short = ["clip_len=32", "maxlen=32"] if quick else []
        common = dict(config=DEFAULT, batch=8, micro_batch=None, overrides=short)
        return [dict(name="fp32, explicit attention (as published)", amp=False, explicit_attention=True, **common),
                dict(name="bf16 autocast, fused attention", amp=True, **common),
                dict(name="bf16 autocast, fused attention, torch.compile", amp=True, compile=True, **common)]
    if quick:
        short = ["clip_len=32", "maxlen=32"]
        return [dict(name="published size, T=32, whole batch", config=DEFAULT, batch=4, micro_batch=4, overrides=short),
                dict(name="published size, T=32, micro-batches of 1", config=DEFAULT, batch=4, micro_batch=1,
                     overrides=short),
                dict(name="demo", config=DEMO, batch=None, micro_batch=None, overrides=[])]
    return [dict(name="published size, whole batch", config=DEFAULT, batch=8, micro_batch=8, overrides=[]),
            dict(name="published size, automatic micro-batches", config=DEFAULT, batch=8, micro_batch=None, overrides=[]),
            dict(name="published size, batch 2", config=DEFAULT, batch=2, micro_batch=None, overrides=[]),
            dict(name="demo", config=DEMO, batch=None, micro_batch=None, overrides=[])]


def matmul_peak_gflops(device: str, size: int = 2048, repeats: int = 5) -> float:
    """fp32 on the CPU, bf16 on CUDA (at 8192, large enough to saturate a GPU)."""
    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (size, torch.float32)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass, counted with hooks on the Linear layers and the attention modules."""
    total = [0]

    def linear_hook(module, inputs, output):
        total[0] += 2 * inputs[0].numel() // module.in_features * module.in_features * module.out_features

    def attention_hook(module, inputs, output):
        groups, tokens, channels = inputs[0].shape  # [B', L, C]; queries and keys have the same length here
        total[0] += 2 * 2 * groups * tokens * tokens * channels

    hooks = [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    hooks += [m.register_forward_hook(attention_hook) for m in model.modules()
              if isinstance(m, (SelfAttention, JointToHyperedgeAttention))]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return total[0]


def run_setup(setup: dict, steps: int, device: str) -> dict:
    """One setup in this process: median step time after one warm-up step, FLOPs, peak memory (RSS on the
    CPU, torch's peak allocation on CUDA)."""
    cfg = load_yaml_config(setup["config"], HYPER, overrides=setup["overrides"] + (
        [] if setup["micro_batch"] is None else [f"micro_batch={setup['micro_batch']}"]))
    batch = setup["batch"] or cfg.train.batch_size
    keep_freed_memory()  # as in train_action.py
    micro_batch = micro_batch_size(cfg, torch.device(device))
    torch.manual_seed(0)
    model = build_model(cfg, micro_batch).to(device)
    frames, classes = cfg.data.clip_len, cfg.data.action_classes
    x = torch.randn(batch, 2, frames, 17, 3, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    flops = 3 * forward_flops(model, x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    explicit = setup.get("explicit_attention", False)
    forward = torch.compile(model) if setup.get("compile") else model

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=setup.get("amp", False)):
            logits = forward(x, return_attention=True)[0] if explicit else forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds(step, steps)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
    return {"setup": setup["name"], "batch": batch, "micro_batch": micro_batch if 0 < micro_batch < batch else batch,
            "frames": frames, "dim": cfg.model.dim_rep, "depth": cfg.model.depth, "step_seconds": seconds,
            "samples_per_second": batch / seconds, "step_gflop": flops / 1e9, "achieved_gflops": flops / seconds / 1e9,
            "peak_memory_bytes": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="32-frame clips, batch 4, one measured step")
    p.add_argument("--steps", type=int, default=None, help="measured steps per setup (default 2, 1 with --quick)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train.json")
    p.add_argument("--setup-index", type=int, default=None, help=argparse.SUPPRESS)  # internal: one setup, JSON out
    args = p.parse_args()
    steps = args.steps or (1 if args.quick else 2)
    if args.setup_index is not None:
        print(json.dumps(run_setup(setups(args.quick, args.device)[args.setup_index], steps, args.device)))
        return
    peak = matmul_peak_gflops(args.device)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    result = {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "platform": platform.platform(), "device": args.device, "gpu": gpu},
              "matmul_peak_gflops": peak, "measured_steps": steps, "runs": []}
    print(f"{'bf16' if gpu else 'fp32'} matmul peak: {peak:.1f} GFLOP/s ({gpu or f'{torch.get_num_threads()} threads'}, "
          f"torch {torch.__version__}); median of {steps} step(s) after a warm-up step")
    for index, setup in enumerate(setups(args.quick, args.device)):
        command = [sys.executable, __file__, "--setup-index", str(index), "--steps", str(steps), "--device", args.device]
        out = subprocess.run(command + (["--quick"] if args.quick else []), check=True, capture_output=True,
                             text=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        run["share_of_peak"] = run["achieved_gflops"] / peak
        result["runs"].append(run)
        chunks = f"micro-batch {run['micro_batch']}" if run["micro_batch"] < run["batch"] else "whole batch"
        print(f"{run['setup']}: batch {run['batch']} ({chunks}), T={run['frames']}, C={run['dim']}, depth "
              f"{run['depth']}: {run['step_seconds']:.2f} s a step, {run['samples_per_second']:.2f} samples/s, "
              f"{run['step_gflop']:.0f} GFLOP a step, {run['achieved_gflops']:.1f} GFLOP/s = "
              f"{100 * run['share_of_peak']:.0f}% of the matmul peak, peak memory {run['peak_memory_bytes'] / 2**30:.2f} GiB")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
