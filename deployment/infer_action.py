"""Classify actions from 2D COCO-17 keypoints with an exported ONNX model, on the CPU, without torch.

    python deployment/infer_action.py --onnx model.onnx --pickle data/action/ntu60_hrnet.pkl --sample S001C001P001R001A001
    python deployment/infer_action.py --onnx model.onnx --keypoints clip.npz [--img-shape 1080 1920]
    python deployment/infer_action.py --onnx model.onnx --json detections.json --window 120 --stride 60 --json-out

The keypoints go through exactly the validation preprocessing of training (lib/data/preprocess.py).
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


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True, help="model written by deployment/deployment_action.py")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pickle", help="PYSKL pickle (use with --sample FRAME_DIR)")
    source.add_argument("--keypoints", help=".npz (keypoint, keypoint_score) or .npy [M, T, 17, 3]")
    source.add_argument("--json", help="per-frame COCO-17 detections of a pose estimator")
    p.add_argument("--sample", help="frame_dir of the sample in --pickle")
    p.add_argument("--img-shape", type=int, nargs=2, default=DEFAULT_IMG_SHAPE, metavar=("H", "W"),
                   help="image height and width of the keypoints (default 1080 1920)")
    p.add_argument("--window", type=int, help="frames per prediction window (default: the whole sequence)")
    p.add_argument("--stride", type=int, help="frames between windows (default: the window)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--json-out", action="store_true", help="print the predictions as JSON")
    args = p.parse_args(argv)
    if args.pickle and not args.sample:
        p.error("--pickle needs --sample FRAME_DIR")
    for name in ("window", "stride", "top_k"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    model = OnnxActionModel(args.onnx, args.threads)
    if args.pickle:
        keypoints = read_pickle_sample(args.pickle, args.sample)
    elif args.keypoints:
        keypoints = read_array_file(args.keypoints, args.img_shape)
    else:
        keypoints = read_json_file(args.json, args.img_shape)
    results = predict(model, keypoints, args.window, args.stride, args.top_k)
    if args.json_out:
        for r in results:
            r["probabilities"] = [float(p) for p in r["probabilities"]]
        print(json.dumps({"onnx": args.onnx, "frames": int(keypoints.keypoint.shape[1]),
                          "persons": int(keypoints.keypoint.shape[0]), "label": keypoints.label,
                          "predictions": results}))
        return
    for r in results:
        print(f"frames {r['frames'][0]}-{r['frames'][1]}:")
        for rank, top in enumerate(r["top"], 1):
            print(f"  {rank}. {top['name']:<48} {100 * top['probability']:6.2f}%")
    if keypoints.label is not None:
        print(f"true class: {model.class_names[keypoints.label]}")


if __name__ == "__main__":
    sys.exit(run_main(main))
