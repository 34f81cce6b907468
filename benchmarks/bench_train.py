"""Training throughput: time a step, samples/s, peak RSS and page faults of full training steps (forward,
backward, AdamW) at the published size (T=243, C=128, depth 6, 2 persons) for batches of 1 to 16 clips,
each run on the whole batch at once and on micro-batches of 1, 2 and 4 clips (those smaller than the
batch), plus one setup at the demo size; the analytic FLOPs of a step, this machine's fp32 matmul peak
measured in the same run, and the share of that peak a step reaches. Prints a table, writes JSON.

    python benchmarks/bench_train.py [--quick] [--batches 1 2 4 8 16] [--micro 1 2 4] [--steps 2]
                                     [--out benchmarks/results/train.json]

Each setup runs in its own fresh process (so its peak RSS is its own) with lib.engine.runtime's
keep_freed_memory, as train_action.py does: one warm-up step, then --steps timed steps (the table shows
their median). Micro-batches are `ActionNet.set_micro_batch(clips)`: each chunk of clips is checkpointed
and recomputed in the backward pass. Page faults are the minor faults of the timed steps, per step. The
load averages at the start and end of each setup and the CPU seconds other processes used meanwhile are
recorded, so a setup that shared the machine shows. A full run first waits for an idle machine and holds
/tmp/BENCH_RUNNING while it runs (benchmarks/common.py).

FLOPs: every Linear layer counted from its input size (2 * tokens * in * out), the attention products
(2 * 2 * groups * heads * Lq * Lk * d); a training step is counted as 3 forwards (backward = 2 forwards).
The recomputed forward of checkpointed micro-batches is not counted: the share of the peak is the
useful work. --quick: 32-frame clips, batch 2, whole and micro-batches of 1, one timed step, and the demo
size (a smoke run for the test suite); it writes JSON only to --out.

With CUDA (--device cuda, the default where available) the published size runs three ways on the GPU at
batch 8: fp32 with explicit attention (the published implementation's arithmetic: materialised score
matrices), bf16 autocast with fused attention, and the same compiled with torch.compile; the peak is then
the GPU's bf16 matmul, the memory torch's peak allocation.
"""
import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (idle_machine, machine_info, machine_load, minor_faults, out_path,  # noqa: E402
                               peak_rss_bytes, write_result)
from lib.config import load_yaml_config  # noqa: E402
from lib.engine.build import action_model  # noqa: E402
from lib.engine.runtime import autocast, keep_freed_memory, micro_batch_size  # noqa: E402
from lib.model.attention import JointToHyperedgeAttention, SelfAttention  # noqa: E402

DEFAULT = ROOT / "configs/action/train_NTU60_xsub_small.yaml"
DEMO = ROOT / "configs/action/demo_synthetic.yaml"
HYPER = ROOT / "hyper_config/method2/manual_joint_label1.yaml"


def setups(quick: bool, device: str, batches: list[int], micro: list[int]) -> list[dict]:
    """name, config, batch (None: the config's), micro_batch (clips per backbone pass: 0 the whole batch,
    None the engine's automatic choice), config overrides; on CUDA also amp, compile and explicit_attention."""
    if device == "cuda":
        short = ["clip_len=32", "maxlen=32"] if quick else []
        common = dict(config=DEFAULT, batch=8, micro_batch=None, overrides=short)
        return [dict(name="fp32, explicit attention (as published)", amp=False, explicit_attention=True, **common),
                dict(name="bf16 autocast, fused attention", amp=True, **common),
                dict(name="bf16 autocast, fused attention, torch.compile", amp=True, compile=True, **common)]
    prefix = "published size, T=32" if quick else "published size"
    overrides = ["clip_len=32", "maxlen=32"] if quick else []
    runs = []
    for batch in batches:
        named = prefix if len(batches) == 1 else f"{prefix}, batch {batch}"
        runs.append(dict(name=f"{named}, whole batch", config=DEFAULT, batch=batch, micro_batch=0, overrides=overrides))
        runs += [dict(name=f"{named}, micro-batches of {clips}", config=DEFAULT, batch=batch, micro_batch=clips,
                      overrides=overrides) for clips in micro if clips < batch]
    return runs + [dict(name="demo", config=DEMO, batch=None, micro_batch=None, overrides=[])]


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
    """One setup in this process: step times after one warm-up step, FLOPs, page faults and peak memory
    (RSS on the CPU, torch's peak allocation on CUDA)."""
    cfg = load_yaml_config(setup["config"], HYPER, overrides=setup["overrides"])
    batch = setup["batch"] or cfg.train.batch_size
    keep_freed_memory()  # as in train_action.py
    clips = micro_batch_size(cfg, torch.device(device)) if setup["micro_batch"] is None else setup["micro_batch"]
    torch.manual_seed(0)
    model = action_model(cfg).set_micro_batch(clips).to(device)
    frames, classes = cfg.data.clip_len, cfg.data.action_classes
    x = torch.randn(batch, 2, frames, 17, 3, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    flops = 3 * forward_flops(model, x[:1]) * batch  # every counted product is linear in the batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    if batch == 1:  # BatchNorm cannot train on one sample: the head's runs on its running statistics
        for module in model.head.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    explicit = setup.get("explicit_attention", False)
    forward = torch.compile(model) if setup.get("compile") else model

    def step():
        with autocast(torch.device(device), setup.get("amp", False)):
            logits = forward(x, return_attention=True)[0] if explicit else forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    faults = minor_faults()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    faults = (minor_faults() - faults) / steps
    seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()
    return {"setup": setup["name"], "batch": batch, "micro_batch": clips if 0 < clips < batch else batch,
            "frames": frames, "dim": cfg.model.dim_rep, "depth": cfg.model.depth, "step_seconds": seconds,
            "step_seconds_each": times, "samples_per_second": batch / seconds, "step_gflop": flops / 1e9,
            "achieved_gflops": flops / seconds / 1e9, "page_faults_per_step": faults, "peak_memory_bytes": peak,
            "head_batchnorm": "eval (one clip)" if batch == 1 else "train"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="32-frame clips, batch 2, one measured step")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes at the published size (default 1 2 4 8 16; 2 with --quick)")
    p.add_argument("--micro", type=int, nargs="+", default=None,
                   help="micro-batch sizes to compare with the whole batch (default 1 2 4; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setup (default 2, 1 with --quick)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default benchmarks/results/train.json; --quick writes only where --out says)")
    p.add_argument("--setup-index", type=int, default=None, help=argparse.SUPPRESS)  # internal: one setup, JSON out
    args = p.parse_args()
    steps = args.steps or (1 if args.quick else 2)
    batches = args.batches or ([2] if args.quick else [1, 2, 4, 8, 16])
    micro = args.micro or ([1] if args.quick else [1, 2, 4])
    all_setups = setups(args.quick, args.device, batches, micro)
    if args.setup_index is not None:
        print(json.dumps(run_setup(all_setups[args.setup_index], steps, args.device)))
        return
    out = out_path(args.out, args.quick, "train.json")
    result = {"command": " ".join(["python", "benchmarks/bench_train.py"] + sys.argv[1:]), "run": {}}
    with contextlib.ExitStack() as stack:
        if not args.quick:
            stack.enter_context(idle_machine(result["run"]))
        peak = matmul_peak_gflops(args.device)
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
        result.update({"machine": machine_info(threads=torch.get_num_threads(), device=args.device, gpu=gpu),
                       "matmul_peak_gflops": peak, "warmup_steps": 1, "measured_steps": steps, "runs": []})
        print(f"{'bf16' if gpu else 'fp32'} matmul peak: {peak:.1f} GFLOP/s ({gpu or f'{torch.get_num_threads()} threads'}, "
              f"torch {torch.__version__}); median of {steps} step(s) after a warm-up step, each setup in a fresh "
              f"process", flush=True)
        for index in range(len(all_setups)):
            command = [sys.executable, __file__, "--setup-index", str(index), "--steps", str(steps), "--device",
                       args.device, "--batches", *map(str, batches), "--micro", *map(str, micro)]
            load = {}
            with machine_load(load):
                child = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"setup '{all_setups[index]['name']}' failed:\n{child.stderr[-3000:]}")
            run = json.loads(child.stdout.strip().splitlines()[-1])
            run["share_of_peak"] = run["achieved_gflops"] / peak
            run.update(load)
            result["runs"].append(run)
            chunks = f"micro-batches of {run['micro_batch']}" if run["micro_batch"] < run["batch"] else "whole batch"
            print(f"{run['setup']}: batch {run['batch']} ({chunks}), T={run['frames']}, C={run['dim']}, depth "
                  f"{run['depth']}: {run['step_seconds']:.2f} s a step, {run['samples_per_second']:.2f} samples/s, "
                  f"{run['step_gflop']:.0f} GFLOP a step, {run['achieved_gflops']:.1f} GFLOP/s = "
                  f"{100 * run['share_of_peak']:.0f}% of the matmul peak, peak memory "
                  f"{run['peak_memory_bytes'] / 2**30:.2f} GiB, {run['page_faults_per_step']:,.0f} page faults a step; "
                  f"load {run['load_average_start'][0]:.2f} -> {run['load_average_end'][0]:.2f}, other processes "
                  f"{run['other_cpu_seconds']:.1f} CPU s", flush=True)
    write_result(result, out)


if __name__ == "__main__":
    main()
