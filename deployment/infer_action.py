"""Classify actions from 2D COCO-17 keypoints with an exported ONNX model, on the CPU, without torch.

    python deployment/infer_action.py --onnx model.onnx --pickle data/action/ntu60_hrnet.pkl --sample S001C001P001R001A001
    python deployment/infer_action.py --onnx model.onnx --keypoints clip.npz [--img-shape 1080 1920]
    python deployment/infer_action.py --onnx model.onnx --json detections.json --window 120 --stride 60 --json-out
    python deployment/infer_action.py --onnx model.onnx --video clip.mp4 --window 64 --stride 16 --render out.mp4
    python deployment/infer_action.py --onnx model.onnx --stream 0 --window 64 --stride 16
    python deployment/infer_action.py --onnx model.onnx --video street.mp4 --per-person --window 64 --stride 16 --render out.mp4
    python deployment/infer_action.py --onnx embed.onnx --gallery gallery.npz --keypoints clip.npz [--threshold 0.5]

The keypoints go through exactly the validation preprocessing of training (lib/data/preprocess.py).
--video and --stream run a pose estimator first (--backend, lib/video/estimators.py; needs OpenCV; of the
none of the backends imports torch). --per-person gives every tracked person their own
windows and predictions (lib/deploy/persons.py). With --video the windows become action segments
(lib/deploy/segments.py), written with --render. With an exported embedding model and --gallery
(lib/fewshot/gallery.py), every input form names the nearest class of the gallery, or "unknown" below the
threshold.
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
from lib.deploy.persons import poses_of, predict_every_person  # noqa: E402
from lib.deploy.segments import check_settings, segments_by_row, write_segments  # noqa: E402
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
                        help="a camera index, a network stream OpenCV opens (rtsp://, http://) or a video file, "
                             "read frame by frame: a prediction every --stride frames over the last --window "
                             "frames (default: the model's clip length)")
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
                   help="print the predictions as JSON (--stream and --per-person: one JSON object a line)")
    p.add_argument("--per-person", action="store_true",
                   help="every tracked person (every person of a keypoint file) gets their own windows and "
                        "predictions; a two-person model sees the nearest other person in its second slot")
    video = p.add_argument_group("--video and --stream")
    video.add_argument("--backend", default="rtmlib",
                       help="pose estimator: rtmlib[:MODE] (default), yolo[:MODEL.onnx] or stand-in:PICKLE "
                            "(see deployment/extract_poses.py)")
    video.add_argument("--device", default="cpu", help="cpu or cuda, for the rtmlib pose estimator (yolo runs on the CPU)")
    video.add_argument("--max-persons", type=int, default=2, help="persons kept per window (default 2)")
    video.add_argument("--render", metavar="OUT.mp4",
                       help="with --video: write the video with the tracked skeletons and the top 3 classes of "
                            "each frame's window (--per-person: each person's top class beside them), "
                            "OUT_segments.json, .csv and .png (the action segments), and without --per-person "
                            "OUT_timeline.png, the class probabilities over time")
    live = p.add_argument_group("--stream from a camera, a network stream or a file with --realtime")
    live.add_argument("--realtime", action="store_true",
                      help="play the --stream file at its frame rate, losing the frames the pipeline is too slow "
                           "for, as a camera would")
    live.add_argument("--pose-size", default="auto", metavar="N|auto",
                      help="the yolo estimator's input size (default: auto, the largest of 640, 480 and 320 "
                           "that keeps up, measured at the start; a file without --realtime: 640)")
    live.add_argument("--pose-every", default="auto", metavar="K|auto",
                      help="estimate poses on every K-th frame, the frames between carry the tracks (default: "
                           "auto, the smallest K that keeps up; a file without --realtime: 1)")
    video.add_argument("--min-segment", type=float, default=1.0, metavar="SECONDS",
                       help="segments shorter than this join their longer neighbour (default 1.0)")
    video.add_argument("--switch-margin", type=float, default=0.1, metavar="P",
                       help="a segment's class changes only when the new class's probability (similarity) "
                            "beats the current one's by more than this (default 0.1)")
    args = p.parse_args(argv)
    if args.threshold is not None and not args.gallery:
        p.error("--threshold goes with --gallery")
    if args.pickle and not args.sample:
        p.error("--pickle needs --sample FRAME_DIR")
    if args.render and not args.video:
        p.error("--render needs --video")
    if args.realtime and (args.stream is None or args.stream.isdigit() or "://" in args.stream):
        raise UserError("--realtime plays a video file given to --stream (a camera or a stream sets its own pace)")
    if args.render and Path(args.render).suffix.lower() not in VIDEO_OUT_SUFFIXES:
        p.error(f"--render must name a {' or '.join(VIDEO_OUT_SUFFIXES)} file")
    for name in ("window", "stride", "top_k", "max_persons"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    check_settings(args.min_segment, args.switch_margin)
    return args


def print_prediction(result: dict, fps: float = None):
    start, end = result["frames"]
    when = f" ({start / fps:.1f}-{end / fps:.1f} s)" if fps else ""
    person = f" person {result['track']}" if "track" in result else ""
    latency = f", {result['latency_ms']:.1f} ms latency" if "latency_ms" in result else ""
    named = f": {result['class']}" if "class" in result else ""
    print(f"frames {start}-{end}{when}{person}{latency}{named}")
    for rank, top in enumerate(result["top"], 1):
        value = f"{100 * top['probability']:6.2f}%" if "probability" in top else f"similarity {top['similarity']:.3f}"
        print(f"  {rank}. {top['name']:<48} {value}")


def as_json(result: dict, fps: float = None) -> dict:
    """A prediction as JSON; a person's prediction (a line of its own) without the full score vector, with
    the window's times when the frame rate is known."""
    if "track" in result:
        out = {key: value for key, value in result.items() if key not in ("probabilities", "similarities")}
        if fps:
            out["seconds"] = [round(frame / fps, 3) for frame in result["frames"]]
        return out
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


def live_choice(value: str, name: str):
    """--pose-size / --pose-every: 'auto' (None) or a whole number of at least 1."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{name} must be 'auto' or a whole number of at least 1 (got {value!r})")
    return int(value)


def run_stream(model: OnnxActionModel, gallery, args):
    from lib.deploy.streaming import describe, live_settings, stream_predictions, timed_frames
    from lib.video.estimators import load_estimator
    from lib.video.extract import FramePoses
    from lib.video.frames import FrameSource
    from lib.video.live import LiveFrames

    source = int(args.stream) if args.stream.isdigit() else args.stream
    live = args.realtime or isinstance(source, int) or "://" in source
    pose_size, pose_every = live_choice(args.pose_size, "--pose-size"), live_choice(args.pose_every, "--pose-every")
    stream = LiveFrames(source, realtime=args.realtime) if live else FrameSource(source)
    estimator = load_estimator(args.backend, args.device)
    if pose_size and not hasattr(estimator, "imgsz"):
        raise UserError(f"--pose-size is for the yolo backend; {estimator.name} has no input size to set")
    window = args.window or model.clip_len
    stride = args.stride or window
    if live:
        frames = iter(stream)
        first = next(frames)  # the settings are measured on it; the frames meanwhile are dropped, as live
        settings = live_settings(estimator, model, first.image, stream.fps, window, stride, pose_size, pose_every)
        print(describe(settings), file=sys.stderr)  # stderr: the predictions on stdout stay clean JSON
        if not settings.keeps_up:
            print(f"live: the estimator and the model cannot keep up with {stream.fps:g} frames a second on this "
                  "machine; frames will be dropped", file=sys.stderr)
        pose_every = settings.pose_every
    else:
        frames = timed_frames(stream)
        if pose_size:
            estimator.imgsz = pose_size
    for result in stream_predictions(model, frames, FramePoses(estimator), window, stride, args.top_k,
                                     args.max_persons, gallery, args.threshold, args.per_person, pose_every or 1):
        if args.json_out:
            print(json.dumps(as_json(result, stream.fps)), flush=True)
        else:
            print_prediction(result, stream.fps)
            sys.stdout.flush()
    if live:
        print(f"{args.stream}: {stream.received} frames received, {stream.dropped} dropped "
              f"({100 * stream.dropped / max(stream.received, 1):.0f}%)", file=sys.stderr)
        if stream.lost:
            print(f"{args.stream} stopped sending after {stream.received} frames; the predictions above are "
                  "all it gave", file=sys.stderr)
            return 1


def render(args, extraction, results, class_names) -> list[str]:
    """The rendered video and, without --per-person, the probability timeline; the files written."""
    from lib.video.frames import FrameSource, VideoWriter
    from lib.video.render import draw_timeline, render_persons, render_video

    out = Path(args.render)
    writer = VideoWriter(out, extraction.fps)
    if args.per_person:
        render_persons(FrameSource(args.video), extraction.poses, results, writer)
        return [str(out)]
    keypoints = extraction.keypoints
    render_video(FrameSource(args.video), keypoints.keypoint, keypoints.score, results, writer)
    timeline = out.with_name(f"{out.stem}_timeline.png")
    draw_timeline(results, class_names, extraction.fps, timeline, title(args))
    return [str(out), str(timeline)]


def title(args) -> str:
    return f"{Path(args.video).name}: {Path(args.onnx).name}"


def write_segment_files(args, extraction, rows: dict, class_names) -> list[str]:
    """OUT_segments.json, .csv and .png beside the rendered video."""
    from lib.video.render import draw_segments

    out = Path(args.render)
    files = [out.with_name(f"{out.stem}_segments{suffix}") for suffix in (".json", ".csv", ".png")]
    info = {"video": args.video, "onnx": args.onnx, "fps": extraction.fps, "per_person": args.per_person,
            "min_segment_s": args.min_segment, "switch_margin": args.switch_margin}
    write_segments(rows, files[0], files[1], info)
    duration = extraction.keypoints.keypoint.shape[1] / extraction.fps
    draw_segments(rows, class_names, duration, files[2], title(args))
    return [str(f) for f in files]


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
    if args.per_person:
        poses = extraction.poses if extraction else poses_of(keypoints)
        results = predict_every_person(model, poses, keypoints.img_hw, args.window, args.stride, args.top_k,
                                       gallery, args.threshold)
    else:
        results = predict(model, keypoints, args.window, args.stride, args.top_k, gallery, args.threshold)
    names = gallery.class_names if gallery else model.class_names
    fps = extraction.fps if extraction else None
    rows = segments_by_row(results, names, fps, args.min_segment, args.switch_margin) if extraction else None
    written = []
    if args.render:
        written = render(args, extraction, results, names) + write_segment_files(args, extraction, rows, names)
    if args.json_out and args.per_person:
        for r in results:
            print(json.dumps(as_json(r, fps)))
        return
    if args.json_out:
        out = {"onnx": args.onnx, "frames": int(keypoints.keypoint.shape[1]),
               "persons": int(keypoints.keypoint.shape[0]), "label": keypoints.label,
               "predictions": [as_json(r) for r in results]}
        if gallery:
            out.update(gallery=args.gallery, threshold=gallery.threshold if args.threshold is None else args.threshold)
        if extraction is not None:
            out.update(video=args.video, fps=extraction.fps, img_shape=list(keypoints.img_hw),
                       extraction_frames_per_second=out["frames"] / extraction.seconds, segments=rows[None])
        if written:
            out.update(render=written[0], files=written[1:])
        print(json.dumps(out))
        return
    for r in results:
        print_prediction(r, fps)
    if keypoints.label is not None:
        print(f"true class: {model.class_names[keypoints.label]}")
    if written:
        print(f"wrote {', '.join(written)}")


if __name__ == "__main__":
    sys.exit(run_main(main))
