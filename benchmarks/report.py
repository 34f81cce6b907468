"""Markdown tables of the recorded benchmark results (benchmarks/results/*.json), as in benchmarks/README.md.
Measures nothing: it only formats what the benchmark scripts wrote.

    python benchmarks/report.py [--results benchmarks/results]
"""
import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GIB, MIB = 2 ** 30, 2 ** 20


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def load(value: list[float] | None) -> str:
    return "-" if value is None else f"{value[0]:.2f}"


def machine(report: dict) -> str:
    m = report.get("machine", {})
    flags = ", ".join(m["cpu_flags"]) if "cpu_flags" in m else "not recorded"
    versions = ", ".join(f"{k} {m[k]}" for k in ("python", "numpy", "torch", "onnxruntime") if k in m)
    threads = f", {m['threads']} threads" if "threads" in m else ""
    run = report.get("run", {})
    loads = (f"; load average (1, 5, 15 min) {run['load_average_start']} at the start, {run['load_average_end']} at "
             f"the end" if "load_average_start" in run else "")
    return (f"{m.get('cpu_model', 'CPU model not recorded')}, {m.get('cpus', '?')} CPUs{threads}, flags: {flags}; "
            f"{versions}; {m.get('platform', '')}{loads}")


def micro_label(run: dict) -> str:
    return "whole batch" if run["micro_batch"] >= run["batch"] else f"micro-batches of {run['micro_batch']}"


def best_marks(runs: list[dict], seconds_key: str) -> dict[int, dict]:
    """The fastest setup of each batch."""
    best = {}
    for run in runs:
        if run["batch"] not in best or run[seconds_key] < best[run["batch"]][seconds_key]:
            best[run["batch"]] = run
    return best


def train_tables(report: dict) -> str:
    runs = [r for r in report["runs"] if r["setup"].startswith("published size")]
    whole = {r["batch"]: r for r in runs if r["micro_batch"] >= r["batch"]}
    best = best_marks(runs, "step_seconds")
    rows = []
    for r in runs:
        mark = "**" if best[r["batch"]] is r else ""
        ratio = whole[r["batch"]]["step_seconds"] / r["step_seconds"] if r["batch"] in whole else None
        each = " / ".join(f"{t:.1f}" for t in r.get("step_seconds_each", []))
        rows.append([str(r["batch"]), f"{mark}{micro_label(r)}{mark}", f"{mark}{r['step_seconds']:.2f} s{mark}",
                     each or "-", f"{r['samples_per_second']:.3f}", "-" if ratio is None else f"{ratio:.2f} x",
                     f"{100 * r['share_of_peak']:.0f}%", f"{r['peak_memory_bytes'] / GIB:.2f} GiB",
                     f"{r.get('page_faults_per_step', float('nan')):,.0f}",
                     f"{load(r.get('load_average_start'))} / {load(r.get('load_average_end'))}",
                     f"{r.get('other_cpu_seconds', float('nan')):.1f}"])
    header = ["batch", "backbone passes", "time a step", "timed steps (s)", "samples/s", "speed vs whole batch",
              "share of matmul peak",
              "peak RSS", "page faults a step", "load at start / end", "CPU s of other processes"]
    others = [r for r in report["runs"] if not r["setup"].startswith("published size")]
    other_rows = [[r["setup"], str(r["batch"]), f"T={r['frames']}, C={r['dim']}, depth {r['depth']}",
                   f"{r['step_seconds']:.2f} s", f"{r['samples_per_second']:.1f}", f"{r['step_gflop']:.1f}",
                   f"{100 * r['share_of_peak']:.0f}%", f"{r['peak_memory_bytes'] / GIB:.2f} GiB"] for r in others]
    text = (f"matmul peak (fp32, 2048 x 2048, best of 5): {report['matmul_peak_gflops']:.1f} GFLOP/s; median of "
            f"{report['measured_steps']} timed steps after {report.get('warmup_steps', 1)} warm-up step\n\n"
            + table(header, rows))
    if other_rows:
        text += "\n\n" + table(["setup", "batch", "size", "time a step", "samples/s", "GFLOP a step",
                                "share of matmul peak", "peak RSS"], other_rows)
    return text


def infer_micro_table(report: dict) -> str:
    runs = report.get("micro_batch", [])
    if not runs:
        return "(no micro-batch table in this file)"
    whole = {r["batch"]: r for r in runs if r["micro_batch"] >= r["batch"]}
    best = best_marks(runs, "ms")
    rows = []
    for r in runs:
        mark = "**" if best[r["batch"]] is r else ""
        rows.append([str(r["batch"]), f"{mark}{micro_label(r)}{mark}", f"{mark}{r['ms']:,.0f} ms{mark}",
                     f"{r['samples_per_second']:.2f}", f"{whole[r['batch']]['ms'] / r['ms']:.2f} x",
                     f"{r['peak_rss_bytes'] / GIB:.2f} GiB", f"{r['page_faults']:,.0f}",
                     f"{load(r['load_average_start'])} / {load(r['load_average_end'])}", f"{r['other_cpu_seconds']:.1f}"])
    header = ["batch", "backbone passes", "time a pass", "samples/s", "speed vs whole batch", "peak RSS",
              "page faults a pass", "load at start / end", "CPU s of other processes"]
    return f"median of {report['repeats']} passes after a warm-up pass\n\n" + table(header, rows)


def infer_engine_tables(report: dict) -> str:
    ms = report["ms"]
    rows = []
    for batch in ms["pytorch_eager"]:
        eager = ms["pytorch_eager"][batch]
        rows.append([batch, f"{eager:,.0f} ms"] + [f"{ms[k][batch]:,.0f} ms ({eager / ms[k][batch]:.2f} x eager)"
                                                   for k in ("onnxruntime_fp32", "onnxruntime_int8")])
    engines = table(["batch", "PyTorch eager", "ONNX Runtime fp32", "ONNX Runtime int8"], rows)
    alone = report["eager_alone"]
    rows = [[batch, f"{alone['default'][batch]['ms']:,.0f} ms ({alone['default'][batch]['page_faults']:,.0f})",
             f"{alone['keep'][batch]['ms']:,.0f} ms ({alone['keep'][batch]['page_faults']:,.0f})"]
            for batch in alone["default"]]
    malloc = table(["batch", "glibc's default malloc (page faults a pass)", "keep_freed_memory (page faults a pass)"],
                   rows)
    return (f"PyTorch eager on micro-batches of {report['eager_micro_batch']} (evaluation's choice at the time of the "
            f"run); median of {report['rounds']} rounds x {report['repeats']} runs\n\n{engines}\n\n{malloc}")


def data_table(reports: dict[str, dict]) -> str:
    def cell(report, fn):
        try:
            return fn(report)
        except (KeyError, TypeError):  # not measured in this run
            return "-"

    rows_spec = [
        ("samples", lambda r: f"{r['first_start']['samples']:,}"),
        ("pickle, keypoint bytes", lambda r: f"{r['pickle_bytes'] / MIB:,.0f} MiB, "
                                             f"{r['first_start']['raw_bytes'] / MIB:,.0f} MiB"),
        ("generate and write the pickle", lambda r: f"{r['generate_seconds']:.0f} s"),
        ("first start (parse, validate, pack, write the cache)", lambda r: f"{r['first_start']['seconds']:.1f} s"),
        ("peak RSS of the parsing process / keypoint bytes",
         lambda r: f"{r['first_start']['packer_peak_rss'] / r['first_start']['raw_bytes']:.2f} x"),
        ("peak RSS of the caller at the first start", lambda r: f"{r['first_start']['peak_rss'] / MIB:.0f} MiB"),
        ("peak RSS of the parsing process", lambda r: f"{r['first_start']['packer_peak_rss'] / MIB:,.0f} MiB"),
        ("private memory (RssAnon) of the caller when ready", lambda r: f"{r['second_start']['anon_rss'] / MIB:.0f} MiB"),
        ("the store on disk", lambda r: f"{r['store_bytes'] / 2**30:.2f} GiB"),
        ("kpfiles (Kinetics)", lambda r: f"{r['kpfiles']['files']:,} files, {r['kpfiles']['bytes'] / 2**30:.2f} GiB"),
        ("later start: ready, peak RSS", lambda r: f"{r['second_start']['seconds']:.2f} s, "
                                                   f"{r['second_start']['peak_rss'] / MIB:.0f} MiB"),
        ("RSS once every keypoint is read / keypoint bytes",
         lambda r: f"{r['second_start']['resident_rss'] / r['second_start']['raw_bytes']:.2f} x"),
        ("`__getitem__`, 243-frame clip, training / test",
         lambda r: f"{r['getitem_ms']['train']:.2f} / {r['getitem_ms']['test']:.2f} ms"),
        ("DataLoader, batch 8, 0 / 1 / 2 workers (samples/s)",
         lambda r: " / ".join(f"{r['loader_samples_per_s'][w]:,.0f}" for w in ("0", "1", "2"))),
    ]
    names = list(reports)
    rows = [[label] + [cell(reports[n], fn) for n in names] for label, fn in rows_spec]
    runs = [f"{reports[n].get('preset', n)} ({n}, " + reports[n].get("run", {}).get("started", "start not recorded") + ")"
            for n in names]
    return table(["data pipeline"] + runs, rows)


def pretrain_tables(report: dict) -> str:
    """The comparison (bench_pretrain.py) and the pretraining throughput, whichever the file holds."""
    parts = []
    if "comparison" in report:
        c = report["comparison"]
        rows = [[f"{100 * r['label_fraction']:.0f}%", r["method"],
                 ", ".join(f"{e}: {v:.2f}" for e, v in r["top1_mean_after"].items()),
                 " / ".join(f"{v:.2f}" for v in r["top1_last"]), f"{r['top1_best_mean']:.2f}"] for r in c["table"]]
        epochs = sorted({(r["label_fraction"], r["epochs"]) for r in c["runs"]})
        curve = c.get("pretrain_curve") or []
        loss = (f"; pretraining loss (position + motion) {curve[0]['loss']:.3f} at epoch 1, {curve[-1]['loss']:.3f} "
                f"(position {curve[-1]['position_loss']:.3f}, motion {curve[-1]['motion_loss']:.3f}) at epoch "
                f"{len(curve)}" if curve else "")
        parts.append(f"{c['preset']} preset, {c['samples']} samples, {c['classes_present']} classes (chance "
                     f"{c['chance_top1']:.0f}%); pretraining {c['pretrain_epochs']} epochs{loss}; training epochs "
                     + ", ".join(f"{e} with {100 * f:.0f}% of the labels" for f, e in epochs) + "\n\n"
                     + table(["labels", "method", "mean top-1 after E epochs (E: top-1)", "last epoch, per seed",
                              "mean of the best epochs"],
                             rows))
    if report.get("throughput"):
        rows = [[str(r["batch"]), f"T={r['frames']}, C={r['dim']}, depth {r['depth']}, decoder {r['decoder_dim']} x "
                 f"{r['decoder_depth']}", "whole batch" if not 0 < r["micro_batch"] < r["batch"]
                 else f"micro-batches of {r['micro_batch']}", f"{r['step_seconds']:.2f} s",
                 f"{r['clips_per_second']:.3f}", f"{r['peak_memory_bytes'] / GIB:.2f} GiB",
                 f"{load(r.get('load_average_start'))} / {load(r.get('load_average_end'))}",
                 f"{r.get('other_cpu_seconds', float('nan')):.1f}"] for r in report["throughput"]]
        parts.append(table(["batch", "size", "backbone passes", "time a step", "clips/s", "peak RSS",
                            "load at start / end", "CPU s of other processes"], rows))
    if "variants" in report:
        rows = [[v["target"], f"{100 * v['mask_ratio']:.0f}%", name, " ".join(f"{x:.3f}" for x in values)]
                for v in report["variants"] for name, values in v["means"].items()]
        window = report["variants"][0]["window"]
        parts.append(f"{report['clips']} clips, batch {report['batch_size']}, lr {report['lr']}; mean of each term over "
                     f"every {window} steps\n\n" + table(["target", "hidden", "term", f"means over {window} steps"], rows))
    return "\n\n".join(parts)


def video_table(report: dict) -> str:
    """Extraction frames/s and streaming latency per backend (bench_video.py)."""
    rows = []
    for name, b in report["backends"].items():
        if "extraction" not in b:
            rows.append([f"`{name}`", "not measured: " + b["why"], "", "", "", ""])
            continue
        e, s = b["extraction"], b["streaming"]
        rows.append([f"`{b['backend']}`", f"{e['video']} ({e['height_width'][1]} x {e['height_width'][0]}, "
                     f"{e['frames']} frames, {e['persons_per_frame']:.1f} persons a frame)",
                     f"{e['frames_per_second']:.1f}", f"{s['latency_ms_median']:.0f} / {s['latency_ms_p90']:.0f}",
                     f"{s['model_ms_median']:.0f}", f"{s['frames_per_second']:.1f}"])
    return table(["backend", "video", "extraction frames/s", "streaming latency a window, median / p90 (ms)",
                  "of which clip + model (ms)", "streaming frames/s"], rows)


def video_person_live_tables(report: dict) -> str:
    """--per-person windows against the number of persons, and the live runs (bench_video.py)."""
    parts = []
    if "per_person" in report:
        parts.append(table(["persons in the window", "all in one model call (ms)", "one call each (ms)"],
                           [[str(r["persons"]), f"{r['batched_ms']:.0f}", f"{r['one_call_each_ms']:.0f}"]
                            for r in report["per_person"]]))
    for name, runs in report.get("live", {}).get("runs", {}).items():
        rows = [[str(r["pose_size"]), f"{r['chosen'][0]}, every {r['chosen'][1]}",
                 f"{r['processed_per_second']:.1f}", f"{r['dropped']} of {r['received']}",
                 f"{r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f}", f"{r['stride_ms']:.0f}"] for r in runs]
        parts.append(f"Live, {name} model, {report['live']['video']}:\n\n" + table(
            ["pose size asked", "pose size, frames estimated", "frames processed a second", "frames lost",
             "latency median / p90 (ms)", "one stride (ms)"], rows))
    return "\n\n".join(parts)


def faults_tables(report: dict) -> str:
    """Killed ranks and recovery, the checkpoint's cost, the loader's start (bench_faults.py)."""
    s = report["summary"]
    rows = [[str(r["trial"]), str(r["rank"]), f"{r['kill_after_s']:.1f}", "yes" if r["killed"] else "no",
             "yes" if r["finished"] else "no",
             "-" if r["max_abs_difference"] is None else f"{r['max_abs_difference']:.1e}", "yes" if r["hung"] else "no",
             str(r["restarts"]), f"{r['work_lost_s']:.2f}" if r["killed"] else "-", f"{r['seconds']:.1f}"]
            for r in report["trials"]]
    trials = table(["trial", "rank killed", "kill after (s)", "killed", "finished", "max abs difference",
                    "hung", "torchrun restarts", "work lost (s)", "wall (s)"], rows)
    summary = (f"{s['trials']} trials, {s['killed']} killed: {s['finished']} finished, {s['equal_weights']} with the "
               f"uninterrupted weights, {s['hung']} hung; work lost {s['work_lost_s_mean']} s mean, "
               f"{s['work_lost_s_max']} s max (latest_epoch.bin every {60 * report['trial_ckpt_every_minutes']:.0f} s); "
               f"the uninterrupted run took {report['uninterrupted_seconds']} s.")
    c = report["checkpoint_save"]
    save = (f"One save of latest_epoch.bin at the published size ({c['parameters']:,} parameters, "
            f"{c['file_bytes'] / 2**20:.1f} MiB): {c['seconds_median']:.3f} s (median of {len(c['seconds_all'])}), "
            f"{100 * c['share_of_training_at_default']:.3f}% of training time at one save every "
            f"{c['default_ckpt_every_minutes']:g} minutes.")
    loader = table(["workers started by", "first batch (s)", "whole pass (s)", "a process's first loader, first batch (s)"],
                   [[method, f"{r['first_batch_s_median']:.3f}", f"{r['pass_s_median']:.3f}",
                     f"{r['first_pass_first_batch_s']:.3f}"] for method, r in report["loader_start"].items()])
    return f"{trials}\n\n{summary}\n\n{save}\n\n{loader}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    files = {path.name: json.loads(path.read_text()) for path in sorted(args.results.glob("*.json"))}
    data = {name: report for name, report in files.items() if name.startswith("data")}
    if data:
        print("## Data\n")
        for name, report in data.items():
            print(f"- {name} (`{report.get('command', 'command not recorded')}`): {machine(report)}")
        print("\n" + data_table(data) + "\n")
    for name, report in files.items():
        if name.startswith("train"):
            print(f"## Training ({name})\n\n`{report.get('command', '')}`\n\n{machine(report)}\n\n"
                  f"{train_tables(report)}\n")
    for name, report in files.items():
        if name.startswith("infer"):
            print(f"## Inference ({name})\n\n`{report.get('command', '')}`\n\n{machine(report)}\n")
            if "micro_batch" in report:
                print(f"### Micro-batches\n\n{infer_micro_table(report)}\n")
            if "ms" in report:
                print(f"### Engines and malloc\n\n{infer_engine_tables(report)}\n")
    for name, report in files.items():
        if name.startswith("video"):
            print(f"## Video ({name})\n\n`{report.get('command', '')}`\n\n{machine(report)}\n\n"
                  f"{video_table(report)}\n\n{video_person_live_tables(report)}\n")
    for name, report in files.items():
        if name.startswith("faults"):
            print(f"## Faults ({name})\n\n`{report.get('command', '')}`\n\n{machine(report)}\n\n"
                  f"{faults_tables(report)}\n")
    for name, report in files.items():
        if name.startswith("pretrain"):
            print(f"## Pretraining ({name})\n\n`{report.get('command', '')}`\n\n{machine(report)}\n\n"
                  f"{pretrain_tables(report)}\n")


if __name__ == "__main__":
    main()
