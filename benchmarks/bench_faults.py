"""Fault benchmark: what a crash costs a training run, and what protects it. Prints tables and writes JSON.

    python benchmarks/bench_faults.py [--trials 20] [--epochs 80] [--seed 0] [--quick] [--work DIR] [--out PATH]

1. Trials: a 2-process torchrun run (gloo on the CPU, a tiny model on a synthetic pickle) with
   --max-restarts and -r auto, in which one rank, drawn at random, is SIGKILLed at a random moment of the
   run (uniform over 5-75% of the uninterrupted run's duration, or as soon as both ranks run, if later).
   Per trial: whether the run finished, the largest difference between its final weights and those of
   the uninterrupted run of the same seed, whether it hung (still running after --hang-limit seconds),
   how many restarts torchrun made, and the seconds of work lost (from the last write of
   latest_epoch.bin to the kill, or from the launch, start-up included, when none was written yet).
2. The seconds one save of latest_epoch.bin takes at the published size (train_NTU60_xsub_small: model,
   AdamW state, RNG states; written and fsynced to --work), and its share of training time at the
   default train.ckpt_every_minutes.
3. DataLoader start per epoch (2 workers), with workers forked from the training process (torch's default)
   and started by the forkserver (lib.engine.runtime.data_loader): the first batch's wait and a whole pass,
   on a fresh loader each time, as each epoch makes one.

A full run writes benchmarks/results/faults.json unless --out says otherwise, after waiting for an idle
machine (benchmarks/common.py); --quick (2 trials, 3 loader passes) writes JSON only to --out.
"""
import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_ARGS = ["--config", "configs/action/train_NTU60_xsub_small.yaml", "--hyper_cfg",
             "hyper_config/method2/manual_joint_label1.yaml", "--hyper_relation_bias", "uniform", "--version", "2"]
CKPT_EVERY_MINUTES = 0.05  # in the trials: latest_epoch.bin every 3 s, so a kill loses at most that


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rank_processes(launcher_pid: int) -> list[int]:
    """The training processes torchrun started (its children that run train_action.py)."""
    ranks = []
    for pid in descendants(launcher_pid):
        try:
            if b"train_action.py" in Path(f"/proc/{pid}/cmdline").read_bytes() and \
                    int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher_pid:
                ranks.append(pid)
        except OSError:
            continue
    return sorted(ranks)


def trial_command(pickle: Path, out: Path, epochs: int, max_restarts: int) -> list[str]:
    overrides = [f"data_root={pickle.parent}", f"dataset={pickle.stem}", "dim_rep=16", "depth=1", "num_heads=2",
                 "clip_len=16", "maxlen=16", "hidden_dim=32", "num_workers=0", "device=cpu", "batch_size=4",
                 "lr_head=0.003", "lr_backbone=0.003", f"epochs={epochs}", f"ckpt_every_minutes={CKPT_EVERY_MINUTES}",
                 "dist_timeout_minutes=1"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={max_restarts}", "train_action.py", *SEED_ARGS, "--checkpoint", str(out), "-r", "auto",
            *[arg for o in overrides for arg in ("--set", o)]]


def start(command: list[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def final_weights(out: Path, epochs: int):
    """The model's weights when the run in `out` has trained all `epochs`, else None."""
    import torch
    path = out / "latest_epoch.bin"
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    return state["model"] if state["progress"]["epoch"] == epochs else None


def max_difference(ours, theirs) -> float | None:
    if ours is None or theirs is None:
        return None
    return max(float((ours[k].double() - v.double()).abs().max()) if v.numel() else 0.0 for k, v in theirs.items())


def stop_group(process: subprocess.Popen):
    """SIGKILL a run that hung: its launcher and everything it started (its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_trial(index: int, pickle: Path, work: Path, epochs: int, reference, duration: float, rng: random.Random,
              hang_limit: float) -> dict:
    out = work / f"trial_{index}"
    moment = rng.uniform(0.05, 0.75) * duration
    victim_rank = rng.randrange(2)
    process = start(trial_command(pickle, out, epochs, max_restarts=3), work / f"trial_{index}.log")
    started = time.monotonic()
    record = {"trial": index, "kill_after_s": round(moment, 2), "rank": victim_rank}
    ranks = []
    while process.poll() is None and (time.monotonic() - started < moment or len(ranks) < 2):
        time.sleep(0.05)
        ranks = rank_processes(process.pid)  # a moment before both ranks started waits for them
    if process.poll() is None:
        latest = out / "latest_epoch.bin"
        saved_at = latest.stat().st_mtime if latest.exists() else None
        os.kill(ranks[victim_rank], signal.SIGKILL)
        killed_at = time.time()
        record["killed"] = True
        record["work_lost_s"] = round(killed_at - (saved_at or (killed_at - (time.monotonic() - started))), 2)
    else:
        record["killed"] = False  # the run had ended
    try:
        process.wait(timeout=hang_limit)
        record["hung"] = False
    except subprocess.TimeoutExpired:
        stop_group(process)
        record["hung"] = True
    record["seconds"] = round(time.monotonic() - started, 1)
    record["finished"] = process.returncode == 0 and final_weights(out, epochs) is not None
    record["max_abs_difference"] = max_difference(final_weights(out, epochs), reference)
    log = (out / "run_action.log").read_text() if (out / "run_action.log").exists() else ""
    record["restarts"] = log.count("torchrun restart")
    return record


def time_checkpoint_save(work: Path, repeats: int) -> dict:
    """One save of latest_epoch.bin at the published size, as the training loop makes it."""
    import torch

    from lib.cli import build_parser, config_from_args
    from lib.engine.checkpoint import save_checkpoint
    from lib.engine.classification import ClassificationTask
    from lib.engine.distributed import Distributed
    from lib.engine.train import Progress, make_optimizer, training_state

    cfg = config_from_args(build_parser("", "train").parse_args(SEED_ARGS + ["--device", "cpu"]))
    task = ClassificationTask(cfg)
    model = task.build_model(torch.device("cpu"), pretrained=False)
    optimizer, scheduler = make_optimizer(task.parameter_groups(model), cfg)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # the AdamW moments exist, as in any checkpoint after the first step
    ctx, progress, path = Distributed(), Progress(epoch=3, next_batch=100, sums={"loss": 1.0}), work / "latest_epoch.bin"
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        save_checkpoint(training_state(model, optimizer, scheduler, progress, cfg, ctx), path)
        times.append(time.perf_counter() - begin)
    seconds = statistics.median(times)
    minutes = cfg.train.ckpt_every_minutes
    return {"config": "train_NTU60_xsub_small", "parameters": sum(p.numel() for p in model.parameters()),
            "file_bytes": path.stat().st_size, "seconds_median": round(seconds, 4), "seconds_all": [round(t, 4) for t in times],
            "default_ckpt_every_minutes": minutes, "share_of_training_at_default": seconds / (60 * minutes)}


def time_loader_starts(pickle: Path, passes: int) -> dict:
    """Per start method: the wait for the first batch and a whole pass of a fresh 2-worker DataLoader over the
    validation split, `passes` times (after the first, which for the forkserver also starts the server)."""
    import torch

    from lib.config import DataConfig
    from lib.data.dataset import ActionDataset, open_store
    from lib.engine.runtime import data_loader

    data = DataConfig(dataset=pickle.stem, data_root=str(pickle.parent), action_classes=60, clip_len=64)
    dataset = ActionDataset(open_store(data), data, train=False)
    makers = {"fork": lambda: torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2,
                                                          multiprocessing_context=multiprocessing.get_context("fork")),
              "forkserver": lambda: data_loader(dataset, torch.device("cpu"), 2, batch_size=8)}
    result = {}
    for method, make in makers.items():
        firsts, wholes = [], []
        for _ in range(passes + 1):
            begin = time.perf_counter()
            iterator = iter(make())
            next(iterator)
            first = time.perf_counter() - begin
            for _ in iterator:
                pass
            firsts.append(first)
            wholes.append(time.perf_counter() - begin)
        result[method] = {"first_pass_first_batch_s": round(firsts[0], 3),
                          "first_batch_s_median": round(statistics.median(firsts[1:]), 4),
                          "pass_s_median": round(statistics.median(wholes[1:]), 4), "clips": len(dataset)}
    return result


def main(argv=None) -> int:
    from benchmarks.common import idle_machine, machine_info, out_path, write_result

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seeds the moments and ranks drawn for the kills")
    p.add_argument("--hang-limit", type=float, default=300, help="seconds after which a trial counts as hung")
    p.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    p.add_argument("--epochs", type=int, default=80, help="epochs of each run (80: about 20 s uninterrupted here)")
    p.add_argument("--quick", action="store_true", help="2 trials of 4 epochs, 3 loader passes (the test suite's run)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    trials, passes, epochs = (2, 3, 4) if args.quick else (args.trials, 10, args.epochs)

    from lib.data import synthetic

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_faults_"))
    work.mkdir(parents=True, exist_ok=True)
    pickle = work / "faults.pkl"
    synthetic.write_pickle(synthetic.generate("demo", seed=0, num_samples=90), pickle)
    result = {"command": " ".join(sys.argv), "trial_epochs": epochs,
              "trial_ckpt_every_minutes": CKPT_EVERY_MINUTES, "hang_limit_s": args.hang_limit}
    run = idle_machine(result) if not args.quick else contextlib.nullcontext()
    with run:
        result["checkpoint_save"] = time_checkpoint_save(work, repeats=3 if args.quick else 10)
        result["loader_start"] = time_loader_starts(pickle, passes)

        reference_out = work / "uninterrupted"
        begin = time.monotonic()
        reference_run = start(trial_command(pickle, reference_out, epochs, max_restarts=0), work / "uninterrupted.log")
        if reference_run.wait() != 0:
            print((work / "uninterrupted.log").read_text()[-3000:])
            raise SystemExit("the uninterrupted run failed")
        duration = time.monotonic() - begin
        reference = final_weights(reference_out, epochs)
        result["uninterrupted_seconds"] = round(duration, 1)
        rng = random.Random(args.seed)
        result["trials"] = []
        for index in range(trials):
            record = run_trial(index, pickle, work, epochs, reference, duration, rng, args.hang_limit)
            result["trials"].append(record)
            print(f"trial {index}: {record}", flush=True)
    result["machine"] = machine_info()

    records = result["trials"]
    killed = [r for r in records if r["killed"]]
    result["summary"] = {
        "trials": len(records), "killed": len(killed), "finished": sum(r["finished"] for r in records),
        "equal_weights": sum(r["max_abs_difference"] == 0.0 for r in records),
        "hung": sum(r["hung"] for r in records),
        "work_lost_s_mean": round(statistics.mean(r["work_lost_s"] for r in killed), 2) if killed else None,
        "work_lost_s_max": max((r["work_lost_s"] for r in killed), default=None)}
    print_tables(result)
    write_result(result, out_path(args.out, args.quick, "faults.json"))
    return 0


def print_tables(result: dict):
    print(f"\n{'trial':>5} {'rank':>4} {'kill at s':>9} {'killed':>6} {'finished':>8} {'max |diff|':>10} {'hung':>5} "
          f"{'restarts':>8} {'lost s':>6} {'wall s':>6}")
    for r in result["trials"]:
        difference = "-" if r["max_abs_difference"] is None else f"{r['max_abs_difference']:.1e}"
        print(f"{r['trial']:>5} {r['rank']:>4} {r['kill_after_s']:>9.1f} {str(r['killed']):>6} {str(r['finished']):>8} "
              f"{difference:>10} {str(r['hung']):>5} {r['restarts']:>8} {r.get('work_lost_s', '-'):>6} {r['seconds']:>6.1f}")
    s = result["summary"]
    print(f"\n{s['trials']} trials, {s['killed']} killed: {s['finished']} finished, {s['equal_weights']} with the "
          f"uninterrupted weights, {s['hung']} hung; work lost {s['work_lost_s_mean']} s mean, {s['work_lost_s_max']} s "
          f"max (checkpoint every {result['trial_ckpt_every_minutes'] * 60:.0f} s); uninterrupted run "
          f"{result['uninterrupted_seconds']} s")
    c = result["checkpoint_save"]
    print(f"checkpoint save at the published size ({c['parameters']:,} parameters, {c['file_bytes'] / 2**20:.1f} MiB): "
          f"{c['seconds_median']:.3f} s median; every {c['default_ckpt_every_minutes']:g} min that is "
          f"{100 * c['share_of_training_at_default']:.3f}% of training time")
    for method, r in result["loader_start"].items():
        print(f"DataLoader, 2 workers, {method:>10}: first batch {r['first_batch_s_median']:.3f} s, whole pass "
              f"({r['clips']} clips) {r['pass_s_median']:.3f} s (median); the process's first loader "
              f"{r['first_pass_first_batch_s']:.3f} s to its first batch")


if __name__ == "__main__":
    sys.exit(main())
