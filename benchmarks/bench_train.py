"""Training throughput: samples/s of full training steps (forward, backward, AdamW) at the published
default size and at the demo size, the analytic FLOPs of a step, this machine's fp32 matmul peak
measured in the same run, and the share of that peak a step reaches. Prints a table, writes JSON.

    python benchmarks/bench_train.py [--quick] [--steps 3] [--out benchmarks/results/train.json]

FLOPs: every Linear layer counted from its input size (2 * tokens * in * out), the attention products
(2 * 2 * groups * heads * Lq * Lk * d); a training step is counted as 3 forwards (backward = 2 forwards).
--quick uses batch 2 at the default size.
"""
import argparse
import os
import platform
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
from lib.model.action import build_model  # noqa: E402
from lib.model.attention import JointToHyperedgeAttention, SelfAttention  # noqa: E402


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
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


def step_seconds(model: nn.Module, batch: int, frames: int, classes: int, steps: int) -> float:
    """Median time of full training steps after one warm-up step."""
    x, y = torch.randn(batch, 2, frames, 17, 3), torch.randint(0, classes, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return median_seconds(step, steps)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 2 at the default size")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train.json")
    args = p.parse_args()
    peak = matmul_peak_gflops()
    hyper = ROOT / "hyper_config/method2/manual_joint_label1.yaml"
    setups = [("default (NTU60 xsub)", ROOT / "configs/action/train_NTU60_xsub_small.yaml", 2 if args.quick else 8),
              ("demo", ROOT / "configs/action/demo_synthetic.yaml", None)]
    result = {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "platform": platform.platform()},
              "matmul_peak_gflops": peak, "runs": []}
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads, torch {torch.__version__})")
    for name, config, batch in setups:
        cfg = load_yaml_config(config, hyper)
        batch = batch or cfg.train.batch_size
        torch.manual_seed(0)
        model = build_model(cfg)
        frames = cfg.data.clip_len
        flops = 3 * forward_flops(model, torch.randn(batch, 2, frames, 17, 3))
        seconds = step_seconds(model, batch, frames, cfg.data.action_classes, args.steps)
        run = {"setup": name, "batch": batch, "frames": frames, "dim": cfg.model.dim_rep, "depth": cfg.model.depth,
               "step_seconds": seconds, "samples_per_second": batch / seconds, "step_gflop": flops / 1e9,
               "achieved_gflops": flops / seconds / 1e9, "share_of_peak": flops / seconds / 1e9 / peak}
        result["runs"].append(run)
        print(f"{name}: batch {batch}, T={frames}, C={run['dim']}, depth {run['depth']}: "
              f"{seconds:.2f} s a step, {run['samples_per_second']:.2f} samples/s, {run['step_gflop']:.0f} GFLOP "
              f"a step, {run['achieved_gflops']:.1f} GFLOP/s = {100 * run['share_of_peak']:.0f}% of the matmul peak")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
