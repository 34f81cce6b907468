"""Published checkpoints (EHGFormer / MixSTE2 state-dict names) -> ours.

    python -m lib.model.convert_reference IN.bin OUT.bin

Maps the published names (with or without DataParallel's `module.`) onto ours, drops what we derive
from the config (joint labels, incidence matrix, merge weight) and the unused pose-regression head,
and infers the model settings from the tensor shapes. The result loads into our model built with
`j2e_layout: reference` (the published joint-to-hyperedge head split); OUT holds
{'model': state dict, 'model_config': inferred settings, 'source': IN}. Every key that could not be
placed is reported. `read_state_dict` also accepts published files directly, converting on the fly.
"""
import argparse
import re
import sys
from pathlib import Path

import torch

from lib.config import Config, apply_mapping
from lib.errors import UserError
from lib.model.action import build_model

# (published pattern, our replacement), applied in order to the name after any `module.` prefix.
RENAMES = (
    (r"(^|\.)Spatial_patch_to_embedding\.", r"\1joint_embed."),
    (r"(^|\.)Spatial_pos_embed$", r"\1spatial_pos"),
    (r"(^|\.)Temporal_pos_embed$", r"\1temporal_pos"),
    (r"(^|\.)STEblocks\.(\d+)\.common_attn_blk\.attn\.outer$", r"\1spatial_blocks.\2.joint_block.attn.joint_bias"),
    (r"(^|\.)STEblocks\.(\d+)\.common_attn_blk\.", r"\1spatial_blocks.\2.joint_block."),
    (r"(^|\.)STEblocks\.(\d+)\.hyper_attn_blk\.hyper_edge\.pro_linears\.0\.", r"\1spatial_blocks.\2.hyper_block.edges.proj."),
    (r"(^|\.)STEblocks\.(\d+)\.hyper_attn_blk\.", r"\1spatial_blocks.\2.hyper_block."),
    (r"(^|\.)TTEblocks\.", r"\1temporal_blocks."),
    (r"(^|\.)Spatial_norm\.", r"\1spatial_norm."),
    (r"(^|\.)Temporal_norm\.", r"\1temporal_norm."),
)
# Published tensors we derive from the config, or never use.
DERIVED = re.compile(r"hyper_edge\.(joint_label|hyper_matrix|merge_weight)$")
POSE_HEAD = re.compile(r"(^|\.)head\.[01]\.(weight|bias)$")

def strip_module_prefix(state_dict: dict) -> dict:
    return {re.sub(r"^(module\.)+", "", k): v for k, v in state_dict.items()}


def is_reference_state_dict(state_dict: dict) -> bool:
    return any(re.search(r"(^|\.)(STEblocks|Spatial_patch_to_embedding)\.", k) for k in state_dict)


def convert_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Published names -> ours. Returns (converted state dict, report) where the report lists the keys
    'dropped' (derived from the config or unused) and the 'joint_label' stored in the file (or None)."""
    converted, dropped, joint_label = {}, [], None
    for key, value in strip_module_prefix(state_dict).items():
        if DERIVED.search(key) or POSE_HEAD.search(key):
            dropped.append(key)
            if key.endswith("joint_label") and joint_label is None:
                joint_label = [int(v) for v in value.flatten().tolist()]
            continue
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value.reshape(()) if key.endswith("attn.alpha") else value
    return converted, {"dropped": dropped, "joint_label": joint_label}


def unplaced_keys(converted: dict, settings: dict) -> list[str]:
    """Keys of `converted` that our model, built with `settings`, has no place for (unknown name or
    another shape), plus our keys the file does not fill (prefixed 'missing: ')."""
    cfg = Config()
    apply_mapping(cfg, {k: v for k, v in settings.items() if k != "joint_label"}, "the converted checkpoint")
    cfg.hyper.joint_label = settings.get("joint_label", cfg.hyper.joint_label)
    model = build_model(cfg)
    target = model if any(k.startswith("backbone.") for k in converted) else model.backbone
    ours = target.state_dict()
    placed = {k for k, v in converted.items() if k in ours and ours[k].shape == v.shape}
    missing = [f"missing: {k}" for k in ours if k not in converted]
    return sorted(set(converted) - placed) + missing


def infer_model_config(state_dict: dict, joint_label=None) -> dict:
    """Model settings implied by the shapes of a converted state dict (config keys and values)."""
    prefix = "backbone." if any(k.startswith("backbone.") for k in state_dict) else ""
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}spatial_blocks\.(\d+)\.", k)))
    settings = {
        "dim_rep": state_dict[f"{prefix}joint_embed.weight"].shape[0],
        "depth": depth,
        "maxlen": state_dict[f"{prefix}temporal_pos"].shape[1],
        "num_heads": state_dict[f"{prefix}spatial_blocks.0.joint_block.attn.joint_bias"].shape[0],
        "version": 2 if f"{prefix}spatial_blocks.0.hyper_block.attn.w1" in state_dict else 1,
        "j2e_layout": "reference",
    }
    if "head.fc2.weight" in state_dict:
        settings["hidden_dim"], settings["action_classes"] = (state_dict["head.fc1.weight"].shape[0],
                                                              state_dict["head.fc2.weight"].shape[0])
    if joint_label is not None:
        settings["joint_label"] = [joint_label]
    return settings


def model_weights(checkpoint) -> dict:
    """The state dict inside a loaded checkpoint: ours and the published ones keep it under 'model'
    (pose checkpoints under 'model_pos'); a bare state dict is returned as is."""
    if isinstance(checkpoint, dict):
        for key in ("model", "model_pos"):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise UserError("the checkpoint holds no model weights (no 'model' state dict)")


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same to the user
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {reason}") from None


def read_state_dict(path) -> tuple[dict, str]:
    """Our model's state dict from a checkpoint file of ours, a converted one, or a published one
    (converted here). Returns (state dict, note): the note says when the file was a published one."""
    state_dict = strip_module_prefix(model_weights(load_checkpoint(path)))
    if not is_reference_state_dict(state_dict):
        return state_dict, ""
    converted, report = convert_state_dict(state_dict)
    note = (f"note: {path} uses the published names; converted on the fly ({len(converted)} tensors, "
            f"{len(report['dropped'])} derived or unused dropped). "
            "It needs model.j2e_layout: reference; python -m lib.model.convert_reference converts it once")
    return converted, note


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
