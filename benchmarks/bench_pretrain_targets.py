"""Which pretraining target the backbone can learn: the demo's pretraining model (configs/pretrain/
pretrain_demo.yaml) trained for --steps steps on the training split of a synthetic demo pickle, with
  moves      the move over `segment` frames as the only target (MAMP's kind of target)
  both       positions and moves (the objective of lib/model/masked_motion.py)
at 90% of the tokens hidden, and the moves alone with 10% hidden and with nothing hidden (every token
visible: the move is then a difference of two inputs the encoder sees). Reports each term's mean over
every 50 steps; a normalised target predicted as zero scores 1. Prints and writes JSON.

    python benchmarks/bench_pretrain_targets.py [--quick] [--steps 300] [--out benchmarks/results/pretrain_targets.json]

--quick: 2 steps on 60 samples (a smoke run); writes JSON only to --out.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, out_path, write_result  # noqa: E402
from lib.config import load_yaml_config  # noqa: E402
from lib.data import synthetic  # noqa: E402
from lib.data.dataset import ActionDataset  # noqa: E402
from lib.data.pyskl import load_store  # noqa: E402
from lib.engine.pretraining import MaskedMotionTask  # noqa: E402
from lib.model.masked_motion import joint_motion, masked_loss, motion_aware_mask, pretraining_loss  # noqa: E402

CONFIG = ROOT / "configs/pretrain/pretrain_demo.yaml"
HYPER = ROOT / "hyper_config/method2/manual_joint_label1.yaml"
VARIANTS = (("moves", 0.9), ("both", 0.9), ("moves", 0.1), ("moves", 0.0))


def train_variant(target: str, ratio: float, clips: torch.Tensor, cfg, steps: int, window: int) -> dict:
    torch.manual_seed(0)
    task = MaskedMotionTask(cfg)
    model = task.build_model(torch.device("cpu"), pretrained=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr_backbone, weight_decay=cfg.train.weight_decay)
    segment = cfg.pretrain.segment
    generator = torch.Generator().manual_seed(0)
    terms = {"position_loss": [], "motion_loss": []}
    start = time.perf_counter()
    for _ in range(steps):
        x = clips[torch.randint(0, len(clips), (cfg.train.batch_size,), generator=generator)]
        sequences = x.flatten(0, 1)
        if ratio > 0:
            mask = motion_aware_mask(sequences, ratio, segment, cfg.pretrain.tau)
        else:
            mask = torch.zeros(sequences.shape[:3], dtype=torch.bool)
        predicted = model(x, mask)
        if target == "both":
            loss, sums = pretraining_loss(predicted, sequences, mask, segment)
            terms["position_loss"].append(sums["position_loss"] / max(sums["position_entries"], 1))
        else:  # the move only; with nothing hidden every token counts
            counted = mask if ratio > 0 else ~mask
            loss, _ = masked_loss(predicted[..., 2:], *joint_motion(sequences, segment), counted)
        terms["motion_loss"].append(float(masked_loss(predicted[..., 2:].detach(), *joint_motion(sequences, segment),
                                                      mask if ratio > 0 else ~mask)[0]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    means = {name: [float(np.mean(values[i:i + window])) for i in range(0, len(values), window)]
             for name, values in terms.items() if values}
    return {"target": target, "mask_ratio": ratio, "steps": steps, "window": window, "means": means,
            "seconds": time.perf_counter() - start}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="training steps per variant (default 300)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_pretrain_targets"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    steps = args.steps or (2 if args.quick else 300)
    window = 1 if args.quick else 50
    args.work.mkdir(parents=True, exist_ok=True)
    pickle_path = args.work / "targets_demo.pkl"
    synthetic.write_pickle(synthetic.generate("demo", seed=0, num_samples=60 if args.quick else 900), pickle_path)
    cfg = load_yaml_config(CONFIG, HYPER, overrides=[f"data_root={args.work}", f"dataset={pickle_path.stem}"])
    dataset = ActionDataset(load_store(pickle_path), cfg.data, train=True, seed=0)
    clips = torch.from_numpy(np.stack([dataset.clip(i) for i in range(len(dataset))]))  # [N, M, T, V, 3]
    result = {"command": " ".join(["python", "benchmarks/bench_pretrain_targets.py"] + sys.argv[1:]),
              "machine": machine_info(threads=torch.get_num_threads(), device="cpu", gpu=None),
              "clips": len(clips), "batch_size": cfg.train.batch_size, "lr": cfg.train.lr_backbone, "variants": []}
    print(f"{len(clips)} training clips of the demo preset, batch {cfg.train.batch_size}, lr {cfg.train.lr_backbone}; "
          f"mean of each term over every {window} steps (a target predicted as zero scores 1)", flush=True)
    for target, ratio in VARIANTS:
        run = train_variant(target, ratio, clips, cfg, steps, window)
        result["variants"].append(run)
        for name, values in run["means"].items():
            print(f"{target:5s} hidden {100 * ratio:3.0f}%  {name:13s} " + " ".join(f"{v:.3f}" for v in values),
                  flush=True)
    write_result(result, out_path(args.out, args.quick, "pretrain_targets.json"))


if __name__ == "__main__":
    main()
