"""Inference benchmark: PyTorch eager against ONNX Runtime for the action model on CPU.

    python benchmarks/bench_infer.py [--config configs/action/train_NTU60_xsub_small.yaml] [--batch 1 8]
                                     [--repeats 5] [--threads N] [--out benchmarks/results/infer.json]

One 2-person clip of clip_len frames (243 for the published configs), random weights, eval mode,
no_grad; the median of --repeats runs after one warm-up run. ONNX Runtime runs the model exported by
lib.deploy.export with the session options of deployment/infer_action.py. Prints a table and writes JSON.
"""
import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import median_seconds, write_result  # noqa: E402
from lib.config import load_yaml_config  # noqa: E402
from lib.deploy.export import export_onnx  # noqa: E402
from lib.deploy.inference import OnnxActionModel  # noqa: E402
from lib.model.action import build_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/action/train_NTU60_xsub_small.yaml"))
    p.add_argument("--hyper_cfg", default=str(ROOT / "hyper_config/method2/manual_joint_label1.yaml"))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/infer.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_yaml_config(args.config, args.hyper_cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    frames = cfg.data.clip_len
    result = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "platform": platform.platform()},
              "config": Path(args.config).name, "frames": frames, "persons": 2, "pytorch_eager_ms": {},
              "onnxruntime_ms": {}}
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "model.onnx"
        export_onnx(model, cfg, [str(k) for k in range(cfg.data.action_classes)], onnx_path)
        session = OnnxActionModel(onnx_path, args.threads).session
    print(f"{Path(args.config).name}: C={cfg.model.dim_rep}, depth {cfg.model.depth}, T={frames}, 2 persons, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    with torch.no_grad():
        for batch in args.batch:
            x = torch.randn(batch, 2, frames, 17, 3)
            eager = median_seconds(lambda: model(x), args.repeats) * 1000
            ort = median_seconds(lambda: session.run(["action_label"], {"pose2d": x.numpy()}), args.repeats) * 1000
            result["pytorch_eager_ms"][str(batch)], result["onnxruntime_ms"][str(batch)] = eager, ort
            print(f"  batch {batch}: PyTorch eager {eager:8.1f} ms, ONNX Runtime {ort:8.1f} ms "
                  f"(ONNX Runtime {eager / ort:.2f}x the speed of eager)")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
