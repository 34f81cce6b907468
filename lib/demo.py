"""The demo behind `make demo`: the published commands, run on a synthetic dataset, then a summary.

    python -m lib.demo [--out checkpoint/demo]

Steps (each a real command, printed before it runs): write the synthetic demo pickle (if missing),
train `configs/action/demo_synthetic.yaml`, evaluate the best checkpoint, render attention heatmaps for
one sample per class, export it to ONNX (with the parity check) and classify one validation sample with
ONNX Runtime; then the same sample as a synthetic video (lib/video/synthetic_video.py), classified
with `infer_action.py --video` over sliding windows (the stand-in estimator reads the poses the frames
carry) and rendered with its skeleton and top classes. Ends with the accuracy, the time of each step and
the path of every artefact.
"""
import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/action/demo_synthetic.yaml"
PICKLE = "data/action/demo_synthetic.pkl"
MODEL_FLAGS = ["--config", CONFIG, "--hyper_cfg", "hyper_config/method2/manual_joint_label1.yaml",
               "--hyper_relation_bias", "uniform", "--version", "2"]


def run(step: str, command: list[str], timings: dict):
    print(f"\n== {step}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    timings[step] = time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="checkpoint/demo", help="run folder (replaced)")
    args = p.parse_args(argv)
    py, out, timings = sys.executable, Path(args.out), {}
    if not (ROOT / PICKLE).is_file():
        run("data", [py, "-m", "lib.data.synthetic", "--preset", "demo", "--out", PICKLE, "--seed", "0"], timings)
    shutil.rmtree(ROOT / out, ignore_errors=True)
    run("train", [py, "train_action.py", *MODEL_FLAGS, "--checkpoint", str(out)], timings)
    best = out / "best_epoch.bin"
    eval_dir = out / "best_epoch_eval"
    run("evaluate", [py, "evaluate_action.py", *MODEL_FLAGS, "--evaluate", str(best), "--out-dir", str(eval_dir)],
        timings)
    vis_dir = out / "vis_data"
    run("heatmaps", [py, "vis_action_attn.py", *MODEL_FLAGS, "--evaluate", str(best), "--per-class", "1",
                     "--attn-dir", str(vis_dir)], timings)
    onnx = out / "demo.onnx"
    run("export", [py, "deployment/deployment_action.py", *MODEL_FLAGS, "--evaluate", str(best),
                   "--deployment", str(onnx)], timings)
    predictions = np.load(ROOT / eval_dir / "predictions.npz")
    sample = str(predictions["frame_dir"][0])
    run("inference", [py, "deployment/infer_action.py", "--onnx", str(onnx), "--pickle", PICKLE, "--sample", sample,
                      "--top-k", "3"], timings)
    video_dir = out / "video"
    run("video", [py, "-m", "lib.video.synthetic_video", "--pickle", PICKLE, "--frame-dir", sample, "--out",
                  str(video_dir), "--height", "360"], timings)
    rendered = video_dir / f"{sample}_predicted.mp4"
    run("video inference", [py, "deployment/infer_action.py", "--onnx", str(onnx), "--video",
                            str(video_dir / f"{sample}.mp4"), "--backend", f"stand-in:{PICKLE}", "--window", "32",
                            "--stride", "16", "--top-k", "3", "--render", str(rendered)], timings)

    metrics = json.loads((ROOT / eval_dir / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (ROOT / out / "metrics.jsonl").read_text().splitlines()]
    artefacts = {
        "dataset": PICKLE, "resolved config": out / "config.yaml", "training log": out / "run_action.log",
        "per-epoch metrics": out / "metrics.jsonl", "TensorBoard": out / "tensorboard",
        "checkpoints": out / "{latest_epoch,best_epoch,epoch_N}.bin", "evaluation": eval_dir / "metrics.json",
        "per-class accuracy": eval_dir / "per_class.csv", "confusion matrix": eval_dir / "confusion.png",
        "predictions": eval_dir / "predictions.npz", "attention heatmaps": vis_dir / "*/sheet.png",
        "ONNX model": onnx, "synthetic video": video_dir / f"{sample}.mp4", "rendered predictions": rendered,
        "probability timeline": rendered.with_name(f"{rendered.stem}_timeline.png"),
    }
    print("\n== demo summary")
    print(f"validation top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, mean class accuracy "
          f"{metrics['mean_class_accuracy']:.2f}% on {metrics['samples']} clips "
          f"(best of {len(epochs)} epochs: epoch {max(epochs, key=lambda e: e['val_top1'])['epoch']})")
    print("time: " + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in timings.items())
          + f", total {sum(timings.values()):.0f} s")
    width = max(map(len, artefacts))
    for name, path in artefacts.items():
        print(f"  {name:<{width}}  {path}")


if __name__ == "__main__":
    main()
