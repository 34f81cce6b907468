"""What masked motion pretraining buys: pretrain a backbone on the training split of a synthetic dataset
(labels unused), then train the action model three ways at an equal budget (the same epochs, schedule and
learning rates for all three) and compare validation top-1:

    scratch      the whole model from random weights
    probe        linear probe: the pretrained backbone frozen, only the head trained (linear_probe)
    finetuned    the whole model from the pretrained backbone (finetune, backbone_ckpt)

each with a share of the training labels (label_fraction: 10% and 100% by default, stratified by class)
and two seeds. Prints a table and writes JSON. The runs are the real commands (pretrain_action.py,
train_action.py) in subprocesses on the demo configs (configs/pretrain/pretrain_demo.yaml,
configs/action/demo_synthetic.yaml), with `--set` overrides only for the data, the epochs, the seed and
the protocol switches. Top-1 is recorded after every epoch (`top1_by_epoch`); the table gives it after a
quarter, a half and all of the epochs. The learning rate decays by a fixed factor each epoch whatever
the number of epochs, so the first E epochs of a run are exactly a run of E epochs: each column is a
comparison at an equal budget of E epochs. `top1_best` is the best epoch's (selected on the validation
split, as the training command does).

    python benchmarks/bench_pretrain.py [--quick] [--preset demo] [--samples 900] [--pretrain-epochs 40]
        [--epochs 10] [--few-label-epochs 40] [--fractions 0.1 1.0] [--seeds 0 1] [--jobs 2]
        [--throughput-batches 4 8] [--skip-comparison] [--work DIR] [--pretrained RUN]
        [--out benchmarks/results/pretrain.json]

Throughput: pretraining steps (masking, forward, loss, backward, AdamW) at the published size
(configs/pretrain/pretrain_NTU60_xsub_small.yaml: T=243, C=128, depth 6, decoder 128 x 2) on random clips
of two persons, for each of --throughput-batches, each in a fresh process (so its peak RSS is its own):
one warm-up step, then --steps timed steps (median). A full run waits for an idle machine before the
throughput part and holds /tmp/BENCH_RUNNING meanwhile (benchmarks/common.py); the comparison runs
first and needs no idle machine (it measures accuracy, not time).

--quick: 120 samples, one pretraining epoch, one training epoch with half of the labels, one seed, T=32
for the throughput at batch 2 with one timed step; a smoke run for the test suite. It writes JSON only to
--out. --skip-comparison: the throughput only (default JSON benchmarks/results/pretrain_throughput.json).
"""
import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (idle_machine, machine_info, machine_load, out_path, peak_rss_bytes,  # noqa: E402
                               write_result)
from lib.data import synthetic  # noqa: E402

HYPER = "hyper_config/method2/manual_joint_label1.yaml"
PRETRAIN_CONFIG = "configs/pretrain/pretrain_demo.yaml"
ACTION_CONFIG = "configs/action/demo_synthetic.yaml"
PUBLISHED = ROOT / "configs/pretrain/pretrain_NTU60_xsub_small.yaml"
METHODS = ("scratch", "probe", "finetuned")
COMMON = ["--hyper_cfg", HYPER, "--hyper_relation_bias", "uniform", "--version", "2"]


def sets(*assignments) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def run_command(argv: list[str], threads: int) -> float:
    """Run `python argv` in ROOT with `threads` intra-op threads; its wall time. Fails loudly."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    child = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"failed: python {' '.join(argv)}\n{child.stdout[-2000:]}{child.stderr[-3000:]}")
    return time.perf_counter() - start


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def training_run(method: str, fraction: float, seed: int, epochs: int, data: list[str], backbone: Path,
                 out: Path, threads: int) -> dict:
    """One train_action.py run of `method`; its validation top-1 at the last and the best epoch."""
    switches = {"scratch": [], "probe": ["finetune=true", "linear_probe=true", f"backbone_ckpt={backbone}"],
                "finetuned": ["finetune=true", f"backbone_ckpt={backbone}"]}[method]
    argv = (["train_action.py", "--config", ACTION_CONFIG, "--checkpoint", str(out), "--seed", str(seed), *COMMON]
            + sets(*data, f"epochs={epochs}", f"label_fraction={fraction}", *switches))
    seconds = run_command(argv, threads)
    records = read_metrics(out)
    return {"method": method, "label_fraction": fraction, "seed": seed, "epochs": epochs,
            "top1_by_epoch": [r["val_top1"] for r in records], "top1_last": records[-1]["val_top1"],
            "top1_best": max(r["val_top1"] for r in records),
            "train_top1_last": records[-1]["train_top1"], "seconds": seconds}


def comparison(args, work: Path) -> dict:
    """Write the synthetic pickle, pretrain once, then every (method, fraction, seed) training run."""
    data_root = work / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    pickle_path = data_root / f"bench_{args.preset}.pkl"
    synthetic.write_pickle(synthetic.generate(args.preset, seed=0, num_samples=args.samples), pickle_path)
    data = [f"data_root={data_root}", f"dataset={pickle_path.stem}"] + args.overrides
    if args.pretrained:  # a finished pretraining run of this benchmark, on the same pickle
        pretrained, seconds = args.pretrained, None
        print(f"pretrained backbone: {pretrained / 'backbone.bin'}", flush=True)
    else:
        pretrained = work / "pretrain"
        print(f"pretraining {args.pretrain_epochs} epochs on the training split of {pickle_path.name} "
              f"({args.samples} samples) ...", flush=True)
        seconds = run_command(["pretrain_action.py", "--config", PRETRAIN_CONFIG, "--checkpoint", str(pretrained),
                               *COMMON] + sets(*data, f"epochs={args.pretrain_epochs}"), torch.get_num_threads())
    curve = [{key: r[f"train_{key}"] for key in ("loss", "position_loss", "motion_loss")}
             for r in read_metrics(pretrained)]
    first, last = curve[0], curve[-1]
    print(f"pretraining: loss {first['loss']:.3f} (position {first['position_loss']:.3f}, motion "
          f"{first['motion_loss']:.3f}) at epoch 1 -> {last['loss']:.3f} (position {last['position_loss']:.3f}, "
          f"motion {last['motion_loss']:.3f}) at epoch {len(curve)}", flush=True)
    jobs = [(method, fraction, seed, args.few_label_epochs if fraction < 1 else args.epochs)
            for fraction in args.fractions for seed in args.seeds for method in METHODS]
    threads = max(1, torch.get_num_threads() // args.jobs)
    runs = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(training_run, method, fraction, seed, epochs, data, pretrained / "backbone.bin",
                               work / f"{method}_{fraction:g}_seed{seed}", threads)
                   for method, fraction, seed, epochs in jobs]
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            runs.append(run)
            print(f"{run['method']:9s} labels {100 * run['label_fraction']:3.0f}% seed {run['seed']}: top-1 "
                  f"{run['top1_last']:.2f} (last epoch of {run['epochs']}), {run['top1_best']:.2f} (best); "
                  f"{run['seconds']:.0f} s", flush=True)
    runs.sort(key=lambda r: (r["label_fraction"], METHODS.index(r["method"]), r["seed"]))
    classes = len(synthetic.PRESETS[args.preset].actions)
    return {"preset": args.preset, "samples": args.samples, "classes_present": classes, "chance_top1": 100 / classes,
            "pretrain_epochs": len(curve), "pretrain_curve": curve, "pretrain_seconds": seconds,
            "pretrained_from": str(args.pretrained) if args.pretrained else None, "parallel_jobs": args.jobs,
            "threads_per_job": threads, "runs": runs,
            "table": summary_table(runs)}


def budgets(epochs: int) -> list[int]:
    """A quarter, a half and all of the epochs (without repeats)."""
    return sorted({max(1, round(epochs / 4)), max(1, round(epochs / 2)), epochs})


def summary_table(runs: list[dict]) -> list[dict]:
    """Per (label fraction, method): the mean top-1 over the seeds after each budget of epochs, the
    last epoch's top-1 of each seed, and the mean of the best epochs' top-1."""
    rows = []
    for fraction in sorted({r["label_fraction"] for r in runs}):
        for method in METHODS:
            chosen = [r for r in runs if r["label_fraction"] == fraction and r["method"] == method]
            if chosen:
                rows.append({"label_fraction": fraction, "method": method, "seeds": [r["seed"] for r in chosen],
                             "top1_mean_after": {str(e): statistics.mean(r["top1_by_epoch"][e - 1] for r in chosen)
                                                 for e in budgets(chosen[0]["epochs"])},
                             "top1_last": [r["top1_last"] for r in chosen],
                             "top1_last_mean": statistics.mean(r["top1_last"] for r in chosen),
                             "top1_best_mean": statistics.mean(r["top1_best"] for r in chosen)})
    return rows


def print_table(rows: list[dict]):
    print(f"\n{'labels':>6} | {'method':9} | {'mean top-1 after E epochs':32} | {'last epoch, per seed':22} | "
          f"{'mean best':>9}")
    for row in rows:
        after = ", ".join(f"E={e}: {v:.2f}" for e, v in row["top1_mean_after"].items())
        seeds = ", ".join(f"{v:.2f}" for v in row["top1_last"])
        print(f"{100 * row['label_fraction']:5.0f}% | {row['method']:9} | {after:32} | {seeds:22} | "
              f"{row['top1_best_mean']:9.2f}")


def throughput_step(batch: int, steps: int, quick: bool) -> dict:
    """In this process: pretraining steps at the published size on random two-person clips."""
    from lib.config import load_yaml_config
    from lib.engine.pretraining import MaskedMotionTask
    from lib.engine.runtime import keep_freed_memory

    overrides = ["clip_len=32", "maxlen=32", "segment=4"] if quick else []
    cfg = load_yaml_config(PUBLISHED, ROOT / HYPER, overrides=overrides + [f"batch_size={batch}"])
    keep_freed_memory()  # as in pretrain_action.py
    torch.manual_seed(0)
    task = MaskedMotionTask(cfg)
    model = task.build_model(torch.device("cpu"), pretrained=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clips = torch.randn(batch, 2, cfg.data.clip_len, 17, 3)
    clips[..., 2] = 1.0

    def step():
        loss, _ = task.training_step(model, clips, torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"batch": batch, "frames": cfg.data.clip_len, "dim": cfg.model.dim_rep, "depth": cfg.model.depth,
            "decoder_dim": cfg.pretrain.decoder_dim, "decoder_depth": cfg.pretrain.decoder_depth,
            "micro_batch": model.micro_batch, "step_seconds": seconds, "step_seconds_each": times,
            "clips_per_second": batch / seconds, "peak_memory_bytes": peak_rss_bytes()}


def throughput(args) -> list[dict]:
    runs = []
    for batch in args.throughput_batches:
        command = [sys.executable, __file__, "--throughput-child", str(batch), "--steps", str(args.steps)]
        load = {}
        with machine_load(load):
            child = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"throughput at batch {batch} failed:\n{child.stderr[-3000:]}")
        run = json.loads(child.stdout.strip().splitlines()[-1])
        run.update(load)
        runs.append(run)
        chunks = f" (micro-batches of {run['micro_batch']})" if 0 < run["micro_batch"] < batch else ""
        print(f"pretraining at T={run['frames']}, C={run['dim']}, depth {run['depth']}, batch {batch}{chunks}: "
              f"{run['step_seconds']:.2f} s a step, {run['clips_per_second']:.2f} clips/s, peak memory "
              f"{run['peak_memory_bytes'] / 2**30:.2f} GiB; load {run['load_average_start'][0]:.2f} -> "
              f"{run['load_average_end'][0]:.2f}, other processes {run['other_cpu_seconds']:.1f} CPU s", flush=True)
    return runs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few samples and epochs, one seed (a smoke run)")
    p.add_argument("--preset", default="demo", choices=tuple(synthetic.PRESETS))
    p.add_argument("--samples", type=int, default=None, help="samples in the synthetic pickle (default 900)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 40")
    p.add_argument("--epochs", type=int, default=None, help="training epochs with all labels (default 10)")
    p.add_argument("--few-label-epochs", type=int, default=None, help="training epochs with fewer labels (default 40)")
    p.add_argument("--fractions", type=float, nargs="+", default=None, help="default 0.1 1.0")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides for pretraining and training, e.g. clip_len=64 (with maxlen=64)")
    p.add_argument("--jobs", type=int, default=None, help="training runs at once, sharing the cores (default 2; "
                                                           "3 with --quick, whose runs are mostly start-up)")
    p.add_argument("--throughput-batches", type=int, nargs="*", default=None, help="default 4 8; none: skip")
    p.add_argument("--skip-comparison", action="store_true", help="the throughput only")
    p.add_argument("--steps", type=int, default=None, help="timed throughput steps (default 2, 1 with --quick)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default a fresh one under /tmp)")
    p.add_argument("--pretrained", type=Path, default=None,
                   help="use this finished pretraining run (its backbone.bin and metrics.jsonl; made by this script "
                        "with the same --preset, --samples and --set) instead of pretraining again")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default benchmarks/results/pretrain.json; --quick writes only where --out says)")
    p.add_argument("--throughput-child", type=int, default=None, help=argparse.SUPPRESS)  # internal: one batch
    args = p.parse_args()
    args.steps = args.steps or (1 if args.quick else 2)
    if args.throughput_child is not None:
        print(json.dumps(throughput_step(args.throughput_child, args.steps, args.quick)))
        return
    quick = args.quick
    args.samples = args.samples or (120 if quick else 900)
    args.pretrain_epochs = args.pretrain_epochs or (1 if quick else 40)
    args.epochs = args.epochs or (1 if quick else 10)
    args.few_label_epochs = args.few_label_epochs or (1 if quick else 40)
    args.fractions = args.fractions or ([0.5] if quick else [0.1, 1.0])
    args.seeds = args.seeds or ([0] if quick else [0, 1])
    args.jobs = args.jobs or (3 if quick else 2)
    if args.throughput_batches is None:
        args.throughput_batches = [2] if quick else [4, 8]
    args.overrides = (["num_workers=0", "batch_size=8"] if quick else ["num_workers=0"]) + args.overrides
    out = out_path(args.out, quick, "pretrain_throughput.json" if args.skip_comparison else "pretrain.json")
    work = args.work or Path(f"/tmp/bench_pretrain_{os.getpid()}")
    result = {"command": " ".join(["python", "benchmarks/bench_pretrain.py"] + sys.argv[1:]), "run": {},
              "machine": machine_info(threads=torch.get_num_threads(), device="cpu", gpu=None)}
    if not args.skip_comparison:
        result["comparison"] = comparison(args, work)
        print_table(result["comparison"]["table"])
    if args.throughput_batches:
        with contextlib.ExitStack() as stack:
            if not quick:
                stack.enter_context(idle_machine(result["run"]))
            result["throughput"] = throughput(args)
    write_result(result, out)


if __name__ == "__main__":
    main()
