"""Data pipeline benchmark: generation, load time and peak memory (first and second start),
__getitem__ time, and DataLoader throughput. Prints a table and writes JSON.

    python benchmarks/bench_data.py [--preset ntu120|ntu60|k400] [--pickle PATH] [--quick] [--out benchmarks/results/data_ntu120.json]

The first start parses the pickle and writes the keypoint cache; the second start memory-maps it.
Each start runs in a fresh process, so its peak RSS is its own. A full run writes
benchmarks/results/data_<preset>.json unless --out says otherwise, after waiting for an idle machine
(holding /tmp/BENCH_RUNNING while it runs, benchmarks/common.py); --quick (demo-size data) writes JSON
only to --out.
"""
import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
K400_VIDEOS = 260_000  # about Kinetics-400's 240k training and 20k validation videos

# Runs in a child process: load the store, build both datasets, report time and peak RSS.
LOAD_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
start = time.perf_counter()
from lib.config import DataConfig
from lib.data.dataset import ActionDataset
from lib.data.pyskl import load_store
store = load_store({pickle!r})
cfg = DataConfig(dataset={dataset!r}, data_root={data_root!r}, data_split={split!r}, action_classes={classes})
train, val = ActionDataset(store, cfg, train=True), ActionDataset(store, cfg, train=False)
seconds = time.perf_counter() - start
def status_kib(field):  # VmHWM is this process's own peak (ru_maxrss would carry the parent's over fork+exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
peak_kib = status_kib("VmHWM")
anon_kib = status_kib("RssAnon")  # private memory: what the process holds besides the mapped store
if {touch}:
    float(store.keypoint.sum()) + float(store.score.sum())  # touch every page, as a full epoch would
packer_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the process that parsed the pickle
print(json.dumps(dict(seconds=seconds, peak_rss=peak_kib * 1024, anon_rss=anon_kib * 1024,
                      resident_rss=status_kib("VmRSS") * 1024 if {touch} else None,
                      packer_peak_rss=packer_peak,
                      raw_bytes=int(store.raw_nbytes), samples=len(store), train=len(train), val=len(val))))
"""


def run_load(pickle: Path, split: str, classes: int, touch: bool = True) -> dict:
    """Load the store in a fresh process; `touch`: then read every page of it (not at Kinetics size, whose
    store is larger than this machine's memory would keep)."""
    code = LOAD_CHILD.format(root=str(ROOT), pickle=str(pickle), dataset=pickle.stem, data_root=str(pickle.parent),
                             split=split, classes=classes, touch=touch)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_getitem(dataset, count: int) -> float:
    """Mean milliseconds per __getitem__ over `count` evenly spread samples."""
    step = max(1, len(dataset) // count)
    indices = range(0, len(dataset), step)[:count]
    start = time.perf_counter()
    for i in indices:
        dataset[i]
    return (time.perf_counter() - start) / len(indices) * 1000


def loader_throughput(dataset, workers: int, batches: int, batch_size: int = 8) -> float:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ntu120", choices=["demo", "ntu60", "ntu120", "k400"],
                   help="k400: a synthetic Kinetics-400 of full size (K400_VIDEOS videos of 250-300 frames, a table "
                        "of contents and kpfiles, lib/data/synthetic_formats.py); about 30 GB of disk")
    p.add_argument("--pickle", type=Path, default=None, help="use this pickle instead of generating one")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_data"))
    p.add_argument("--quick", action="store_true", help="demo-size data (k400: 2,000 videos) and fewer reads")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default benchmarks/results/data_<preset>.json; --quick writes only where --out says)")
    args = p.parse_args()
    from benchmarks.common import idle_machine, out_path, write_result

    preset = "demo" if args.quick and args.preset != "k400" else args.preset
    out = out_path(args.out, args.quick, f"data_{preset}.json")
    result = {"command": " ".join(["python", "benchmarks/bench_data.py"] + sys.argv[1:]), "run": {}}
    with contextlib.ExitStack() as stack:
        if not args.quick:
            stack.enter_context(idle_machine(result["run"]))
        measure(args, preset, result)
    write_result(result, out)


def measure(args, preset: str, result: dict):
    from benchmarks.common import machine_info
    from lib.config import DataConfig
    from lib.data import synthetic, synthetic_formats
    from lib.data.dataset import ActionDataset
    from lib.data.pyskl import load_store

    result.update({"machine": machine_info(), "preset": preset})
    pickle, kinetics = args.pickle, preset == "k400"
    if pickle is None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        pickle = args.workdir / ("k400_hrnet.pkl" if kinetics else f"{preset}_synthetic.pkl")
        start = time.perf_counter()
        if kinetics:
            synthetic_formats.write("k400", pickle, num_samples=2_000 if args.quick else K400_VIDEOS, frames=(250, 300),
                                    processes=2)
        else:
            synthetic.write_pickle(synthetic.generate(preset, seed=0), pickle)  # freed before the loads below
        result["generate_seconds"] = time.perf_counter() - start
    result["pickle_bytes"] = pickle.stat().st_size
    if kinetics:
        kpfiles = list((pickle.parent / "kpfiles").glob(f"{pickle.stem}_part_*.pkl"))
        result["kpfiles"] = {"files": len(kpfiles), "bytes": sum(f.stat().st_size for f in kpfiles)}
        split, classes = "official", 400
    else:
        split, classes = ("xsub", 120) if preset == "ntu120" or "120" in pickle.stem else ("xsub", 60)

    cache = pickle.parent / ".cache" / pickle.stem
    shutil.rmtree(cache, ignore_errors=True)
    result["first_start"] = run_load(pickle, split, classes, touch=not kinetics)
    result["second_start"] = run_load(pickle, split, classes, touch=not kinetics)
    result["store_bytes"] = sum(f.stat().st_size for f in cache.iterdir())

    store = load_store(pickle)
    cfg = DataConfig(dataset=pickle.stem, data_root=str(pickle.parent), data_split=split, action_classes=classes)
    train, val = ActionDataset(store, cfg, train=True), ActionDataset(store, cfg, train=False)
    reads = 200 if args.quick else 2000
    result["getitem_ms"] = {"train": time_getitem(train, reads), "test": time_getitem(val, reads)}
    batches = 10 if args.quick else 50
    result["loader_samples_per_s"] = {str(w): loader_throughput(train, w, batches) for w in (0, 1, 2)}

    raw = result["second_start"]["raw_bytes"]
    rows = [("samples", result["first_start"]["samples"]), ("pickle size", f"{result['pickle_bytes'] / 2**20:.0f} MiB"),
            ("raw keypoint bytes", f"{raw / 2**20:.0f} MiB"), ("store on disk", f"{result['store_bytes'] / 2**30:.2f} GiB")]
    if kinetics:
        rows.append(("kpfiles", f"{result['kpfiles']['files']} files, {result['kpfiles']['bytes'] / 2**30:.2f} GiB"))
    if "generate_seconds" in result:
        rows.insert(0, ("generate + write", f"{result['generate_seconds']:.1f} s"))
    for start in ("first_start", "second_start"):
        r = result[start]
        rows.append((f"{start.replace('_', ' ')}: ready", f"{r['seconds']:.2f} s"))
        rows.append((f"{start.replace('_', ' ')}: peak RSS when ready", f"{r['peak_rss'] / 2**20:.0f} MiB "
                                                                        f"({r['peak_rss'] / raw:.2f} x raw)"))
        if r["packer_peak_rss"]:
            rows.append((f"{start.replace('_', ' ')}: peak RSS of the parsing process",
                         f"{r['packer_peak_rss'] / 2**20:.0f} MiB ({r['packer_peak_rss'] / raw:.2f} x raw)"))
        rows.append((f"{start.replace('_', ' ')}: private memory (RssAnon) when ready", f"{r['anon_rss'] / 2**20:.0f} MiB"))
        if r["resident_rss"] is not None:
            rows.append((f"{start.replace('_', ' ')}: RSS, all keypoints read",
                         f"{r['resident_rss'] / 2**20:.0f} MiB ({r['resident_rss'] / raw:.2f} x raw)"))
    rows += [("__getitem__ train", f"{result['getitem_ms']['train']:.2f} ms"),
             ("__getitem__ test", f"{result['getitem_ms']['test']:.2f} ms")]
    rows += [(f"DataLoader, {w} workers", f"{v:.0f} samples/s") for w, v in result["loader_samples_per_s"].items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
