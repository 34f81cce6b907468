"""Checkpoint files: reading (ours, converted or published), atomic saves, loading weights into a model
with a clear report, finetuning."""
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lib.engine.published_names import convert_state_dict, is_reference_state_dict, strip_module_prefix
from lib.errors import UserError

log = logging.getLogger(__name__)


def model_weights(checkpoint) -> dict:
    """The state dict inside a loaded checkpoint: ours and the published ones keep it under 'model'
    (pose checkpoints under 'model_pos', our backbone.bin under 'backbone'); a bare state dict is
    returned as is."""
    if isinstance(checkpoint, dict):
        for key in ("model", "model_pos", "backbone"):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise UserError("the checkpoint holds no model weights (no 'model' state dict)")


def load_checkpoint(path):
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.bin"))
        raise UserError(f"{path} is a folder; give a checkpoint file in it"
                        f"{': ' + ', '.join(inside) if inside else ' (it holds no .bin file)'}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same to the user
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {reason}") from None


def read_state_dict(path, checkpoint=None) -> tuple[dict, str]:
    """Our model's state dict from a checkpoint file of ours, a converted one, or a published one
    (converted here); `checkpoint`: the file's content when already loaded. Returns (state dict, note):
    the note says when the file was a published one."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    state_dict = strip_module_prefix(model_weights(checkpoint))
    if not is_reference_state_dict(state_dict):
        return state_dict, ""
    converted, report = convert_state_dict(state_dict)
    note = (f"note: {path} uses the published names; converted on the fly ({len(converted)} tensors, "
            f"{len(report['dropped'])} derived or unused dropped). "
            "It needs model.j2e_layout: reference; python -m lib.engine.convert_reference converts it once")
    return converted, note


# Backbone settings that shape the weights, and the config keys that set them.
BACKBONE_SETTING_KEYS = {"dim": "dim_rep", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
                         "max_frames": "maxlen", "with_hypergraph": "version",
                         "joint_label": "hyper.joint_label", "j2j_adjacency": "j2j_adjacency",
                         "j2e_layout": "j2e_layout", "j2e_main": "j2e_main", "j2e_bias": "j2e_bias"}


def check_backbone_settings(saved: dict, backbone_cfg, path):
    """A backbone.bin fits only a backbone built with the same settings: the first that differs is a
    one-line error naming its config key."""
    for name, key in BACKBONE_SETTING_KEYS.items():
        theirs, ours = saved.get(name), getattr(backbone_cfg, name)
        if isinstance(ours, tuple):
            theirs = tuple(theirs) if theirs is not None else None
        if theirs != ours:
            if name == "with_hypergraph":
                theirs, ours = (2 if theirs else 1), (2 if ours else 1)
            raise UserError(f"{path} was pretrained with {key} = {theirs}, but this model has {key} = {ours}: "
                            f"finetune with the backbone settings it was pretrained with (--set {key}=...)")


def save_checkpoint(state: dict, path: Path):
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`: a crash
    at any moment leaves either the previous file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class MatchReport:
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # in the model, not in the file
    unexpected: list = field(default_factory=list)  # in the file, not in the model
    mismatched: list = field(default_factory=list)  # "name: file shape vs model shape"

    def summary(self) -> str:
        def some(keys):
            return f" (e.g. {', '.join(keys[:3])})" if keys else ""
        return (f"{len(self.loaded)} loaded, {len(self.missing)} missing{some(self.missing)}, "
                f"{len(self.unexpected)} unexpected{some(self.unexpected)}, "
                f"{len(self.mismatched)} with another shape{some(self.mismatched)}")


def match_state_dict(target: dict, source: dict) -> MatchReport:
    report = MatchReport()
    for key, value in source.items():
        if key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(target[key].shape)}")
        else:
            report.loaded.append(key)
    report.missing = [k for k in target if k not in source]
    return report


def _layout_hint(state_dict: dict, model: nn.Module) -> str:
    in_file = any(k.endswith("hyper_block.attn.kv.weight") for k in state_dict)
    in_model = any(k.endswith("hyper_block.attn.kv.weight") for k in model.state_dict())
    if in_file and not in_model:
        return "; it was trained with the published head split: add --set model.j2e_layout=reference"
    if in_model and not in_file:
        return "; it uses the standard head split: remove model.j2e_layout=reference"
    return "; check --version, --hyper_cfg and the model keys of the config (dim_rep, depth, num_heads, maxlen)"


def load_model_weights(model: nn.Module, path, checkpoint=None) -> str:
    """Load a whole model's weights from a checkpoint of ours, a converted or a published one (`checkpoint`:
    the file's content when already loaded). Anything that does not fit exactly is a UserError. Returns a
    note to show ('' when there is none)."""
    state_dict, note = read_state_dict(path, checkpoint)
    report = match_state_dict(model.state_dict(), state_dict)
    if report.missing or report.unexpected or report.mismatched:
        raise UserError(f"checkpoint {path} does not fit this model: {report.summary()}"
                        f"{_layout_hint(state_dict, model)}")
    model.load_state_dict(state_dict)
    return note


def load_backbone_weights(model: nn.Module, path) -> MatchReport:
    """Finetuning: load what fits into model.backbone from a backbone-only state dict, a whole action
    checkpoint of ours, a backbone.bin of pretrain_action.py (whose settings must match the model's), or
    a (converted) published one. Stops when nothing matches."""
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and "backbone_config" in checkpoint:
        check_backbone_settings(checkpoint["backbone_config"], model.backbone.cfg, path)
    state_dict, note = read_state_dict(path, checkpoint)
    if note:
        log.info(note)
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    target = model.backbone.state_dict()
    report = match_state_dict(target, state_dict)
    if not report.loaded:
        raise UserError(f"nothing in {path} matches the backbone ({report.summary()}): "
                        "is it a checkpoint of this model?")
    model.backbone.load_state_dict({k: state_dict[k] for k in report.loaded}, strict=False)
    return report


def freeze_backbone_except(model: nn.Module, patterns: list[str]) -> list[str]:
    """Freeze every backbone parameter whose name contains none of `patterns`; return the names left
    trainable."""
    trainable = []
    for name, param in model.backbone.named_parameters():
        param.requires_grad = any(p in name for p in patterns)
        if param.requires_grad:
            trainable.append(name)
    if not trainable:
        raise UserError(f"partial_train {patterns} matches no backbone parameter; names look like "
                        "'spatial_blocks.5.hyper_block' or 'temporal_blocks.5'")
    return trainable
