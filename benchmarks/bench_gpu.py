"""The GPU check: one command that measures training and inference on a GPU against the published code's
figures, the attention implementations at the model's shapes, kernels per step, the data loader, and runs
two published-size epochs, the demo and an exact resume on CUDA. Prints one table, writes JSON.

    python benchmarks/bench_gpu.py [--sections train infer attention ops loader epoch resume ddp demo]
                                   [--steps 5] [--out benchmarks/results/gpu.json] [--quick]

Published size (T=243, 2 persons, C=128, depth 6, 8 heads); every model setup runs in its own fresh process:
warm-up steps, then --steps timed steps, their median reported; CUDA is synchronised around each. Before the
timed processes, the compiled model setups are compiled once, side by side, so that the timed processes find
torch.compile's caches warm (the compile time of each is recorded). The published code's own figures (its
model and training loop on the same GPU type, benchmarks/results/h200/published_vs_ours_before.jsonl) give
the speed-up column. `--quick` runs the same code on the CPU in about half a minute (32 frames, batch 2,
eager setups only; epoch and resume with a tiny model; no demo, no torchrun) and writes JSON only to --out.

Sections: train (a step at batch 8 and 32, eager and compiled), infer (batch 1 and 64: eager, compiled, CUDA
graphs), attention (each implementation of lib.model.attention, forward and backward, eager and compiled, at
the spatial and temporal shapes of a batch of 8, one after the other in one process; and whole compiled
training steps with `sdpa` and `flex`), ops (ATen operators a step and a forward pass dispatch,
benchmarks/op_count.py; GPU kernels per step come from the profiler in every timed setup), profile (the
kernels that take the most time in a compiled training step at batch 32, torch.profiler), loader (clips/s
of the data pipeline with 1 worker and with the automatic number), epoch (two published-size epochs of
train_action.py, its loader included), resume (two epochs against one epoch and a resume: the weights must
be equal), ddp (torchrun with NCCL, when there are 2 or more GPUs), demo (`python -m lib.demo` on CUDA).
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, out_path, write_result  # noqa: E402
from benchmarks.op_count import count_model  # noqa: E402
from lib.config import load_yaml_config  # noqa: E402
from lib.engine.build import action_model  # noqa: E402
from lib.engine.compiled import CompiledOrEager, inference_forward  # noqa: E402
from lib.engine.runtime import autocast  # noqa: E402
from lib.model.attention import attend  # noqa: E402

CONFIG = ROOT / "configs/action/train_NTU60_xsub_small.yaml"
HYPER = ROOT / "hyper_config/method2/manual_joint_label1.yaml"
PUBLISHED = ROOT / "benchmarks/results/h200/published_vs_ours_before.jsonl"
SECTIONS = ("train", "infer", "attention", "ops", "profile", "loader", "epoch", "resume", "ddp", "demo")
PROFILE_TOP = 15  # kernels listed by the profile section
ATTENTION_IMPLS = ("explicit", "sdpa", "sdpa_cudnn", "sdpa_efficient", "flex")
COMPILED_ATTENTION = ("explicit", "sdpa", "flex")  # the SDPA back-ends compile to the same kernel as eager
CHILD_TIMEOUT_S = 300


def timed_setups(quick: bool, sections) -> list[dict]:
    """The setups that run one per process: kind train / infer / attention, with their settings."""
    setups = []
    if "train" in sections:
        for batch in (8, 32):
            for compiled in (False, True):
                setups.append(dict(kind="train", batch=batch, compile=compiled, attention="auto"))
    if "infer" in sections:
        for batch in (1, 64):
            for mode in ("eager", "compiled", "cudagraphs"):
                setups.append(dict(kind="infer", batch=batch, mode=mode))
    if "profile" in sections:  # where the time of the default training step goes, kernel by kernel
        setups.append(dict(kind="train", batch=32, compile=True, attention="auto", profile=True))
    if "attention" in sections:
        for attention in ("sdpa", "flex"):  # the other implementations in the whole compiled model
            setups.append(dict(kind="train", batch=32, compile=True, attention=attention))
        for shape in ("joint", "temporal"):
            for impl in ATTENTION_IMPLS:
                for compiled in (False, True):
                    if (impl == "flex" and not compiled) or (compiled and impl not in COMPILED_ATTENTION):
                        continue  # eager FlexAttention is a reference implementation, not a kernel
                    setups.append(dict(kind="attention", shape=shape, impl=impl, compile=compiled, batch=8))
    if quick:  # the CPU: eager only, batch 2, and the CPU has neither cuDNN nor the efficient kernel
        quick_setups = {}
        for s in setups:
            if s.get("profile"):
                s = dict(s, compile=False)  # the CPU profiles the eager step
            if not s.get("compile") and s.get("mode", "eager") == "eager" and s.get("impl") not in ("sdpa_cudnn",
                                                                                                   "sdpa_efficient"):
                quick_setups.setdefault(setup_name(dict(s, batch=2)), dict(s, batch=2))
        setups = list(quick_setups.values())
    return setups


def setup_name(s: dict) -> str:
    if s["kind"] == "attention":
        return f"attention {s['shape']}, {s['impl']}{', compiled' if s['compile'] else ''}, batch {s['batch']}"
    if s["kind"] == "train":
        attention = "" if s["attention"] == "auto" else f", attention {s['attention']}"
        profiled = ", profiled" if s.get("profile") else ""
        return f"train step, batch {s['batch']}{', compiled' if s['compile'] else ''}{attention}{profiled}"
    return f"inference, batch {s['batch']}, {s['mode']}"


def load_cfg(frames: int):
    return load_yaml_config(CONFIG, HYPER, overrides=[f"clip_len={frames}", f"maxlen={frames}"])


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, steps: int, warmup: int, device) -> tuple[list[float], float]:
    """(the wall times of `steps` calls after `warmup` calls, the seconds the warm-up took)."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, warmup_seconds


def kernel_profile(fn, device) -> list[dict]:
    """The PROFILE_TOP operators (CUDA: kernels) that took the most device time in one call of fn, with their
    share of that time; on the CPU the operators by CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    if device.type == "cuda":
        times = [(e.name, 1, e.device_time) for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        times = [(e.key, e.count, e.self_cpu_time_total) for e in prof.key_averages()]
    by_name = {}
    for name, calls, microseconds in times:
        previous_calls, previous_time = by_name.get(name, (0, 0.0))
        by_name[name] = (previous_calls + calls, previous_time + microseconds)
    total = sum(t for _, t in by_name.values()) or 1.0
    top = sorted(by_name.items(), key=lambda item: -item[1][1])[:PROFILE_TOP]
    return [{"name": name[:120], "calls": calls, "milliseconds": t / 1000, "share": t / total}
            for name, (calls, t) in top]


def gpu_kernels(fn, device) -> int | None:
    """GPU kernels one call of fn launches (the profiler's CUDA kernel events); None on the CPU."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def attention_inputs(shape: str, batch: int, frames: int, device):
    """q, k, v [B', h, L, d] and the bias of one attention of the published model at `batch` clips."""
    heads, head_dim, joints = 8, 16, 17
    groups, length = (batch * 2 * frames, joints) if shape == "joint" else (batch * 2 * joints, frames)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(groups, heads, length, head_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    bias = (0.1 * torch.randn(1, heads, joints, joints, device=device, dtype=dtype)).requires_grad_() \
        if shape == "joint" else None
    return q, k, v, bias


def run_setup(s: dict, steps: int, device, frames: int) -> dict:
    """One timed setup in this process."""
    torch.manual_seed(0)
    warmup = 3 if s.get("compile") or s.get("mode", "eager") != "eager" else 1
    if s["kind"] == "attention":
        q, k, v, bias = attention_inputs(s["shape"], s["batch"], frames, device)

        def attention(q, k, v, bias):
            return attend(q, k, v, bias, attention=s["impl"])[0]

        fn = torch.compile(attention) if s["compile"] else attention

        def step():
            out = fn(q, k, v, bias)
            out.float().square().mean().backward()

        times, warmup_seconds = time_calls(step, steps, warmup, device)
        kernels = gpu_kernels(step, device)
        return dict(times=times, warmup_seconds=warmup_seconds, kernels=kernels)

    cfg = load_cfg(frames)
    cfg.model.attention = s.get("attention", "auto")
    model = action_model(cfg).to(device)
    x = torch.randn(s["batch"], 2, frames, 17, 3, device=device)
    if s["kind"] == "train":
        y = torch.randint(0, cfg.data.action_classes, (s["batch"],), device=device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        forward = CompiledOrEager(model) if s["compile"] else model
        model.train()

        def step():
            with autocast(device, True):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()
        if s["mode"] == "eager":
            forward = model
        else:  # the evaluation path: compiled, on CUDA with CUDA graphs (reduce-overhead)
            forward = inference_forward(model, True, device) if s["mode"] == "cudagraphs" else CompiledOrEager(model)

        def step():
            with torch.no_grad(), autocast(device, True):
                forward(x).float().cpu()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, warmup_seconds = time_calls(step, steps, warmup, device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    kernels = gpu_kernels(step, device)
    if s.get("profile"):
        return dict(times=times, warmup_seconds=warmup_seconds, kernels=kernels, profile=kernel_profile(step, device))
    fell_back = isinstance(forward, CompiledOrEager) and forward.failed
    return dict(times=times, warmup_seconds=warmup_seconds, kernels=kernels, peak_memory_bytes=peak,
                compile_failed=fell_back)


def published_seconds() -> dict:
    """(mode, batch) -> the published code's step seconds (fp32, its default) and peak memory on the H200."""
    figures = {}
    if PUBLISHED.exists():
        for line in PUBLISHED.read_text().splitlines():
            run = json.loads(line)
            if run["impl"] == "published" and not run["amp"]:
                figures[(run["mode"], run["batch"])] = (run["step_seconds"], run["peak_memory_bytes"])  # mode: train / infer
    return figures


def child(setups: list[dict], args, compile_only: bool = False) -> list[dict]:
    """Run `setups` one after the other in a fresh process; their JSON (or the error, for each not measured)."""
    command = [sys.executable, __file__, "--setup", json.dumps(setups), "--steps", "1" if compile_only else str(args.steps),
               "--frames", str(args.frames), "--device", args.device]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as timeout:
        done = subprocess.CompletedProcess(command, -1, timeout.stdout or "", f"no result within {CHILD_TIMEOUT_S} s")
    runs = [json.loads(line) for line in (done.stdout or "").splitlines() if line.startswith("{")]
    if len(runs) < len(setups):
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        runs += [{"error": error, "seconds": time.perf_counter() - started}] * (len(setups) - len(runs))
    return runs


def section_timed(setups, args, result):
    """Compile every compiled model setup side by side (warming torch.compile's caches), then time each model
    setup alone in a fresh process, and the attention setups one after the other in one more process."""
    models = [s for s in setups if s["kind"] != "attention"]
    compiled = [s for s in models if s.get("compile") or s.get("mode", "eager") != "eager"]
    if compiled:
        print(f"compiling {len(compiled)} setups side by side ...", flush=True)
        with ThreadPoolExecutor(max_workers=min(len(compiled), 8)) as pool:
            warm = list(pool.map(lambda s: child([s], args, compile_only=True)[0], compiled))
        for s, w in zip(compiled, warm):
            s["cold_compile_seconds"] = w.get("warmup_seconds")
    published = published_seconds()
    attention = [s for s in setups if s["kind"] == "attention"]
    batches = [[s] for s in models] + ([attention] if attention else [])
    for batch in batches:
        for s, run in zip(batch, child(batch, args)):
            row = {"setup": setup_name(s), **s, **run}
            if "times" in run:
                row["step_seconds"] = statistics.median(run["times"])
                if args.device == "cuda" and (s["kind"], s["batch"]) in published:
                    seconds, memory = published[(s["kind"], s["batch"])]
                    row["published_step_seconds"], row["published_peak_memory_bytes"] = seconds, memory
                    row["speedup"] = seconds / row["step_seconds"]
            result["runs"].append(row)
            print(format_row(row), flush=True)
            for entry in row.get("profile", []):
                print(f"    {100 * entry['share']:5.1f}%  {entry['milliseconds']:8.2f} ms  {entry['calls']:5d} x  "
                      f"{entry['name']}", flush=True)
            save_partial(result)


def save_partial(result: dict):
    """The JSON so far, beside the final one (a run cut short keeps what it measured)."""
    if result.get("out"):
        Path(result["out"]).with_suffix(".partial.json").write_text(json.dumps(result, indent=2))


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['setup']:<52} FAILED: {row['error']}"
    text = f"{row['setup']:<52} {1000 * row['step_seconds']:9.2f} ms"
    if row.get("speedup"):
        text += f"  {row['speedup']:5.2f}x published ({1000 * row['published_step_seconds']:.1f} ms)"
    if row.get("peak_memory_bytes"):
        text += f"  {row['peak_memory_bytes'] / 2**30:6.2f} GiB"
        if row.get("published_peak_memory_bytes"):
            text += f" ({row['peak_memory_bytes'] / row['published_peak_memory_bytes']:.0%} of published)"
    if row.get("kernels") is not None:
        text += f"  {row['kernels']} kernels"
    if row.get("cold_compile_seconds"):
        text += f"  (compile {row['cold_compile_seconds']:.0f} s)"
    if row.get("compile_failed"):
        text += "  [compile failed: eager]"
    return text


def section_ops(args, result, device):
    """ATen operators of a forward pass and of a training step (eager, under bf16 autocast on CUDA)."""
    cfg = load_cfg(16)
    torch.manual_seed(0)
    model = action_model(cfg).to(device)
    x = torch.randn(2, 2, 16, 17, 3, device=device)
    y = torch.randint(0, cfg.data.action_classes, (2,), device=device)
    counts = count_model(model, x, y, device if device.type == "cuda" else None)
    result["operators"] = counts
    for what, c in counts.items():
        print(f"ATen operators, {what.replace('_', ' ')}: {c['kernels']} kernels ({c['copies']} copies), "
              f"{c['views']} views", flush=True)


def section_loader(args, result, workdir: Path):
    """Clips/s of the training pipeline (published clip length) with 1 worker and the automatic count."""
    from lib.data.dataset import ActionDataset
    from lib.data.pyskl import load_store
    from lib.engine.runtime import loader_workers

    pickle = make_pickle(workdir, 240 if args.quick else 1600)
    cfg = load_cfg(args.frames)
    cfg.data.data_root, cfg.data.dataset = str(pickle.parent), pickle.stem
    dataset = ActionDataset(load_store(pickle), cfg.data, train=True)
    auto = loader_workers(cfg, torch.device(args.device))
    rates = {}
    for workers in sorted({1, auto}):
        loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers,
                                             drop_last=True, pin_memory=args.device == "cuda")
        batches = min(4 if args.quick else 60, len(loader) - 1)
        iterator = iter(loader)
        next(iterator)  # the workers' start
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates[workers] = batches * 8 / (time.perf_counter() - start)
        print(f"loader, {workers} worker(s): {rates[workers]:.0f} clips/s", flush=True)
    result["loader"] = {"clips_per_second_by_workers": rates, "automatic_workers": auto,
                        "clips_per_second_per_worker": rates[1]}


def make_pickle(workdir: Path, samples: int) -> Path:
    pickle = workdir / "ntu60_bench.pkl"
    if not pickle.exists():
        subprocess.run([sys.executable, "-m", "lib.data.synthetic", "--preset", "ntu60", "--out", str(pickle),
                        "--num-samples", str(samples)], cwd=ROOT, check=True, capture_output=True)
    return pickle


def run_command(name: str, command: list[str], result: dict, env=None) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    result.setdefault("commands", {})[name] = {"command": " ".join(command), "returncode": done.returncode,
                                                "seconds": round(seconds, 1)}
    status = "ok" if done.returncode == 0 else f"FAILED ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})"
    print(f"{name}: {status} in {seconds:.0f} s", flush=True)
    return done


# --quick runs the epoch and resume sections on the CPU with a tiny model; the full run at the published size.
TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=8", "maxlen=8", "hidden_dim=32", "num_workers=0"]


def epoch_batch(args) -> int:
    return 4 if args.quick else 32


def train_command(pickle: Path, out: Path, epochs: int, args, extra=()) -> list[str]:
    sets = (TINY if args.quick else []) + [f"batch_size={epoch_batch(args)}"]
    command = [sys.executable, "train_action.py", "--config", str(CONFIG), "-c", str(out), "--device", args.device,
               "--set", f"data_root={pickle.parent}", "--set", f"dataset={pickle.stem}", "--set", f"epochs={epochs}"]
    for assignment in sets:
        command += ["--set", assignment]
    return command + list(extra)


def section_epoch(args, result, workdir: Path):
    """Two epochs of train_action.py at the published size with its loader (compiled on CUDA, automatic
    workers): the second epoch's seconds (training and validation) and the graphs compiled by then."""
    pickle = make_pickle(workdir, 240 if args.quick else 1600)
    out = workdir / "epoch"
    name = "epochs of train_action.py" + ("" if args.quick else " (published size, batch 32)")
    done = run_command(name, train_command(pickle, out, 2, args), result)
    metrics = out / "metrics.jsonl"
    if done.returncode == 0 and metrics.exists():
        first, second = (json.loads(line) for line in metrics.read_text().splitlines())
        train_clips = len(load_store_indices(pickle, "xsub_train")) // epoch_batch(args) * epoch_batch(args)
        result["commands"][name].update(first_epoch_seconds=first["seconds"], epoch_seconds=second["seconds"],
                                        train_clips=train_clips, compiled_graphs=[first.get("compiled_graphs"),
                                                                                  second.get("compiled_graphs")])
        graphs = (f"; graphs compiled after each epoch: {first['compiled_graphs']}, {second['compiled_graphs']} (epoch 1 "
                  "includes the compiling)" if "compiled_graphs" in second else "")
        print(f"  epoch 1 {first['seconds']:.1f} s, epoch 2 {second['seconds']:.1f} s for {train_clips} training clips "
              f"and the validation split{graphs}", flush=True)


def load_store_indices(pickle: Path, split: str):
    from lib.data.pyskl import load_store

    return load_store(pickle).split_indices(split)


def section_resume(args, result, workdir: Path):
    """Two epochs straight against one epoch then -r latest_epoch.bin: the final weights must be equal."""
    pickle = make_pickle(workdir, 240 if args.quick else 1600)
    small = [] if args.quick else ["--set", "clip_len=32", "--set", "maxlen=32", "--set", "compile=false"]
    straight, split = workdir / "straight", workdir / "split"
    run_command("resume: 2 epochs", train_command(pickle, straight, 2, args, small), result)
    run_command("resume: 1 epoch", train_command(pickle, split, 1, args, small), result)
    run_command("resume: -r, epoch 2",
                train_command(pickle, split, 2, args, small + ["-r", str(split / "latest_epoch.bin")]), result)
    a = torch.load(straight / "latest_epoch.bin", map_location="cpu", weights_only=False)["model"]
    b = torch.load(split / "latest_epoch.bin", map_location="cpu", weights_only=False)["model"]
    difference = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    result["resume_max_weight_difference"] = difference
    print(f"resume on {args.device}: largest weight difference {difference}", flush=True)


def section_demo(args, result):
    run_command("make demo on CUDA (python -m lib.demo)", [sys.executable, "-m", "lib.demo"], result)


def section_ddp(args, result, workdir: Path):
    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"ddp: skipped ({gpus} GPU)", flush=True)
        result["ddp"] = f"skipped: {gpus} GPU"
        return
    pickle = make_pickle(workdir, 1600)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}"] + \
        train_command(pickle, workdir / "ddp", 1, args)[1:]
    run_command(f"torchrun, {gpus} GPUs, NCCL", command, result)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--steps", type=int, default=None, help="timed steps per setup (default 5; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="the CPU, 32 frames, eager setups only, in seconds")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/gpu.json; --quick: only --out)")
    p.add_argument("--device", default=None, help="cuda (default), or cpu (default with --quick)")
    p.add_argument("--frames", type=int, default=None, help="clip length (default 243; 32 with --quick)")
    p.add_argument("--setup", default=None, metavar="JSON",
                   help="run these setups (a JSON list, as the JSON's runs name them) in this process and print "
                        "one JSON line each (how every timed process is started)")
    args = p.parse_args()
    args.steps = args.steps or (1 if args.quick else 5)
    args.frames = args.frames or (32 if args.quick else 243)
    args.device = args.device or ("cpu" if args.quick else "cuda")
    device = torch.device(args.device)
    if args.setup:
        for setup in json.loads(args.setup):
            try:
                run = run_setup(setup, args.steps, device, args.frames)
            except Exception as error:  # a setup this GPU or torch cannot run is a result too
                run = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"}
            print(json.dumps(run), flush=True)
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU; --quick runs its code on the CPU")
    out = out_path(args.out, args.quick, "gpu.json")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    result = {"command": " ".join(["python", "benchmarks/bench_gpu.py"] + sys.argv[1:]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": machine_info(device=args.device, gpu=gpu, gpus=torch.cuda.device_count()),
              "frames": args.frames, "measured_steps": args.steps, "runs": [], "out": str(out) if out else None}
    print(f"{gpu or 'CPU'}, torch {torch.__version__}, T={args.frames}, {'bf16 autocast' if gpu else 'fp32'}; median "
          f"of {args.steps} step(s), each setup in a fresh process", flush=True)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        section_timed(timed_setups(args.quick, args.sections), args, result)
        if "ops" in args.sections:
            section_ops(args, result, device)
        if "loader" in args.sections:
            section_loader(args, result, workdir)
        for name, fn in (("epoch", section_epoch), ("resume", section_resume)):
            if name in args.sections:
                fn(args, result, workdir)
        if device.type == "cuda":  # the CPU runs the demo in make demo, and torchrun in the test suite
            if "ddp" in args.sections:
                section_ddp(args, result, workdir)
            if "demo" in args.sections:
                section_demo(args, result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"bench_gpu.py: {result['seconds']:.0f} s", flush=True)
    write_result(result, out)
    if out:
        out.with_suffix(".partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
