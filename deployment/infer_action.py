"""Classify actions from 2D COCO-17 keypoints with an exported ONNX model, on the CPU, without torch.

    python deployment/infer_action.py --onnx model.onnx --pickle data/action/ntu60_hrnet.pkl --sample S001C001P001R001A001
    python deployment/infer_action.py --onnx model.onnx --keypoints clip.npz [--img-shape 1080 1920]
    python deployment/infer_action.py --onnx model.onnx --json detections.json --window 120 --stride 60 --json-out
    python deployment/infer_action.py --onnx model.onnx --video clip.mp4 --window 64 --stride 16 --render out.mp4
    python deployment/infer_action.py --onnx model.onnx --stream 0 --window 64 --stride 16
    python deployment/infer_action.py --onnx embed.onnx --gallery gallery.npz --keypoints clip.npz [--threshold 0.5]

The keypoints go through exactly the validation preprocessing of training (lib/data/preprocess.py).
--video and --stream run a pose estimator first (--backend, lib/video/estimators.py; needs OpenCV; of the
backends only yolo imports torch). With an exported embedding model and --gallery (lib/fewshot/gallery.py), every
input form names the nearest class of the gallery, or "unknown" below the threshold.
Formats: deployment/inference.md.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.cli import run_main  # noqa: E402
from lib.data.keypoint_files import (DEFAULT_IMG_SHAPE, read_array_file, read_json_file,  # noqa: E402
                                     read_pickle_sample)
from lib.deploy.inference import OnnxActionModel, predict  # noqa: E402
from lib.errors import UserError  # noqa: E402
from lib.fewshot.gallery import Gallery  # noqa: E402
from lib.video.frames import VIDEO_OUT_SUFFIXES  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True, help="model written by deployment/deployment_action.py")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pickle", help="PYSKL pickle (use with --sample FRAME_DIR)")
    source.add_argument("--keypoints", help=".npz (keypoint, keypoint_score) or .npy [M, T, 17, 3]")
    source.add_argument("--json", help="per-frame COCO-17 detections of a pose estimator")
    source.add_argument("--video", help="a video file or a folder of frames: poses are extracted first (--backend)")
    source.add_argument("--stream", metavar="SOURCE",
                        help="a camera index or a video file, read frame by frame: a prediction every --stride "
                             "frames over the last --window frames (default: the model's clip length)")
    p.add_argument("--sample", help="frame_dir of the sample in --pickle")
    p.add_argument("--img-shape", type=int, nargs=2, default=DEFAULT_IMG_SHAPE, metavar=("H", "W"),
                   help="image height and width of the keypoints (default 1080 1920)")
    p.add_argument("--window", type=int, help="frames per prediction window (default: the whole sequence)")
    p.add_argument("--stride", type=int, help="frames between windows (default: the window)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--gallery", help="with an embedding model: the classes of python -m lib.fewshot.gallery")
    p.add_argument("--threshold", type=float,
                   help="with --gallery: the cosine similarity below which a clip is 'unknown' (default: the "
                        "gallery's suggested threshold; -1: never unknown)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--json-out", action="store_true",
                   help="print the predictions as JSON (--stream: one JSON object a line, as they come)")
    video = p.add_argument_group("--video and --stream")
    video.add_argument("--backend", default="rtmlib",
                       help="pose estimator: rtmlib[:MODE] (default), yolo[:MODEL.onnx] or stand-in:PICKLE "
                            "(see deployment/extract_poses.py)")
    video.add_argument("--device", default="cpu", help="cpu or cuda, for the rtmlib pose estimator (yolo runs on the CPU)")
    video.add_argument("--max-persons", type=int, default=2, help="persons kept per window (default 2)")
    video.add_argument("--render", metavar="OUT.mp4",
                       help="with --video: write the video with the tracked skeletons and the top 3 classes of "
                            "each frame's window, and OUT_timeline.png, the class probabilities over time")
    args = p.parse_args(argv)
    if args.threshold is not None and not args.gallery:
        p.error("--threshold goes with --gallery")
    if args.pickle and not args.sample:
        p.error("--pickle needs --sample FRAME_DIR")
    if args.render and not args.video:
        p.error("--render needs --video")
    if args.render and Path(args.render).suffix.lower() not in VIDEO_OUT_SUFFIXES:
        p.error(f"--render must name a {' or '.join(VIDEO_OUT_SUFFIXES)} file")
    for name in ("window", "stride", "top_k", "max_persons"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def print_prediction(result: dict, fps: float = None):
    start, end = result["frames"]
    when = f" ({start / fps:.1f}-{end / fps:.1f} s)" if fps else ""
    latency = f", {result['latency_ms']:.1f} ms latency" if "latency_ms" in result else ""
    named = f": {result['class']}" if "class" in result else ""
    print(f"frames {start}-{end}{when}{latency}{named}")
    for rank, top in enumerate(result["top"], 1):
        value = f"{100 * top['probability']:6.2f}%" if "probability" in top else f"similarity {top['similarity']:.3f}"
        print(f"  {rank}. {top['name']:<48} {value}")


def as_json(result: dict) -> dict:
    return {key: [float(v) for v in value] if key in ("probabilities", "similarities") else value
            for key, value in result.items()}


def load_gallery(model: OnnxActionModel, args):
    """The gallery of --gallery, checked against the model; None without one. An embedding model needs one."""
    if not args.gallery:
        if model.task == "embed":
            raise UserError(f"{args.onnx} is an embedding model: name classes with --gallery gallery.npz "
                            "(python -m lib.fewshot.gallery)")
        return None
    if model.task != "embed":
        raise UserError(f"--gallery needs an exported embedding model, but {args.onnx} is a classification model")
    gallery = Gallery.load(args.gallery)
    gallery.check_model(model)
    return gallery


def run_stream(model: OnnxActionModel, gallery, args):
    from lib.deploy.streaming import stream_predictions
    from lib.video.estimators import load_estimator
    from lib.video.extract import FramePoses
    from lib.video.frames import FrameSource

    source = FrameSource(int(args.stream) if args.stream.isdigit() else args.stream)
    window = args.window or model.clip_len
    poses = FramePoses(load_estimator(args.backend, args.device))
    for result in stream_predictions(model, source, poses, window, args.stride or window, args.top_k,
                                     args.max_persons, gallery, args.threshold):
        if args.json_out:
            print(json.dumps(as_json(result)), flush=True)
        else:
            print_prediction(result, source.fps)
            sys.stdout.flush()


def render(args, extraction, results, class_names):
    from lib.video.frames import FrameSource, VideoWriter
    from lib.video.render import draw_timeline, render_video

    out = Path(args.render)
    writer = VideoWriter(out, extraction.fps)
    keypoints = extraction.keypoints
    render_video(FrameSource(args.video), keypoints.keypoint, keypoints.score, results, writer)
    timeline = out.with_name(f"{out.stem}_timeline.png")
    draw_timeline(results, class_names, extraction.fps, timeline, f"{Path(args.video).name}: {Path(args.onnx).name}")
    return str(out), str(timeline)


def main(argv=None):
    args = parse_args(argv)
    model = OnnxActionModel(args.onnx, args.threads)
    gallery = load_gallery(model, args)
    if args.stream is not None:
        return run_stream(model, gallery, args)
    extraction = None
    if args.pickle:
        keypoints = read_pickle_sample(args.pickle, args.sample)
    elif args.keypoints:
        keypoints = read_array_file(args.keypoints, args.img_shape)
    elif args.json:
        keypoints = read_json_file(args.json, args.img_shape)
    else:
        from lib.video.estimators import load_estimator
        from lib.video.extract import extract
        from lib.video.frames import FrameSource

        extraction = extract(FrameSource(args.video), load_estimator(args.backend, args.device), args.max_persons)
        keypoints = extraction.keypoints
    results = predict(model, keypoints, args.window, args.stride, args.top_k, gallery, args.threshold)
    names = gallery.class_names if gallery else model.class_names
    rendered = render(args, extraction, results, names) if args.render else None
    if args.json_out:
        out = {"onnx": args.onnx, "frames": int(keypoints.keypoint.shape[1]),
               "persons": int(keypoints.keypoint.shape[0]), "label": keypoints.label,
               "predictions": [as_json(r) for r in results]}
        if gallery:
            out.update(gallery=args.gallery, threshold=gallery.threshold if args.threshold is None else args.threshold)
        if extraction is not None:
            out.update(video=args.video, fps=extraction.fps, img_shape=list(keypoints.img_hw),
                       extraction_frames_per_second=out["frames"] / extraction.seconds)
        if rendered:
            out.update(render=rendered[0], timeline=rendered[1])
        print(json.dumps(out))
        return
    fps = extraction.fps if extraction else None
    for r in results:
        print_prediction(r, fps)
    if keypoints.label is not None:
        print(f"true class: {model.class_names[keypoints.label]}")
    if rendered:
        print(f"wrote {rendered[0]} and {rendered[1]}")


if __name__ == "__main__":
    sys.exit(run_main(main))
