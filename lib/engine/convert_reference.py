"""Convert a published checkpoint (EHGFormer / MixSTE2 state-dict names) to ours, once:

    python -m lib.engine.convert_reference IN.bin OUT.bin

OUT holds {'model': state dict, 'model_config': the settings inferred from the shapes, 'source': IN}.
Every key that could not be placed is reported. Checkpoint reading (lib/engine/checkpoint.py) also
accepts published files directly, converting them on the fly.
"""
import argparse
import sys
from pathlib import Path

import torch

from lib.config import Config, apply_mapping
from lib.engine.build import action_model
from lib.engine.checkpoint import load_checkpoint, model_weights
from lib.engine.published_names import convert_state_dict, infer_model_config, is_reference_state_dict, strip_module_prefix
from lib.errors import UserError


def unplaced_keys(converted: dict, settings: dict) -> list[str]:
    """Keys of `converted` that our model, built with `settings`, has no place for (unknown name or
    another shape), plus our keys the file does not fill (prefixed 'missing: ')."""
    cfg = Config()
    apply_mapping(cfg, {k: v for k, v in settings.items() if k != "joint_label"}, "the converted checkpoint")
    cfg.hyper.joint_label = settings.get("joint_label", cfg.hyper.joint_label)
    model = action_model(cfg)
    target = model if any(k.startswith("backbone.") for k in converted) else model.backbone
    ours = target.state_dict()
    placed = {k for k, v in converted.items() if k in ours and ours[k].shape == v.shape}
    missing = [f"missing: {k}" for k in ours if k not in converted]
    return sorted(set(converted) - placed) + missing


def main(argv=None):
    p = argparse.ArgumentParser(description="Convert a published checkpoint to this project's names.")
    p.add_argument("src", help="published checkpoint (.bin/.pth)")
    p.add_argument("dst", help="output checkpoint")
    args = p.parse_args(argv)
    state_dict = strip_module_prefix(model_weights(load_checkpoint(args.src)))
    if not is_reference_state_dict(state_dict):
        raise UserError(f"{args.src} does not use the published names (no STEblocks); nothing to convert")
    converted, report = convert_state_dict(state_dict)
    settings = infer_model_config(converted, report["joint_label"])
    unplaced = unplaced_keys(converted, settings)
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": converted, "model_config": settings, "source": str(args.src)}, args.dst)
    print(f"converted {len(converted)} tensors from {args.src} to {args.dst}")
    print(f"dropped (derived from the config or unused): {len(report['dropped'])}")
    print("model settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(f"use them, e.g.: --set model.j2e_layout=reference --set depth={settings['depth']}")
    print(f"not placed ({len(unplaced)}): " + (", ".join(unplaced) if unplaced else "none"))


if __name__ == "__main__":
    from lib.cli import run_main

    sys.exit(run_main(main))
