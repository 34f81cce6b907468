"""Models from the config: a fresh action model, or a trained one with the validation split it is judged on."""
import dataclasses
import logging
from dataclasses import dataclass

import torch

from lib.config import Config, apply_mapping, validate
from lib.data.dataset import ActionDataset, open_store
from lib.data.labels import class_names
from lib.engine.checkpoint import BACKBONE_SETTING_KEYS, load_checkpoint, load_model_weights
from lib.model.action import ActionNet, build_model
from lib.model.backbone import BackboneConfig

log = logging.getLogger(__name__)


def backbone_settings(cfg: Config) -> BackboneConfig:
    m = cfg.model
    return BackboneConfig(
        dim=m.dim_rep, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, max_frames=m.maxlen,
        drop_path_rate=m.drop_path_rate, block_dropout=m.block_dropout, with_hypergraph=m.version == 2,
        joint_label=tuple(cfg.hyper.joint_label[0]), joint_bias_init=m.hyper_relation_bias,
        j2j_adjacency=m.j2j_adjacency, j2e_layout=m.j2e_layout, j2e_main=m.j2e_main, j2e_bias=m.j2e_bias,
        attention=m.attention)


def action_model(cfg: Config) -> ActionNet:
    """The config's action model (classification or embedding, model.model_version) with fresh weights."""
    m = cfg.model
    return build_model(cfg.data.action_classes, backbone_settings(cfg), m.hidden_dim, m.dropout_ratio,
                       embed_dim=m.embed_dim if m.model_version == "embed" else None)


# Model settings that say how attention is computed, not what the weights are: the given config's stay.
RUNTIME_MODEL_KEYS = {"attention"}


def with_checkpoint_model(cfg: Config, checkpoint, state=None) -> Config:
    """`cfg` with the model settings (sections model and hyper) that a checkpoint of ours was trained with, so
    that evaluating, drawing or exporting a run needs none of its --set overrides again; the config and --set
    still give the data and evaluation settings. Where the two disagree, the checkpoint wins and one log line
    names the keys. Published and converted checkpoints hold no config: `cfg` as it is. `state`: the
    checkpoint's content when already loaded."""
    state = load_checkpoint(checkpoint) if state is None else state
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        return cfg
    trained = Config()
    for section in ("model", "hyper"):  # keys that this version no longer has are left out
        known = {f.name for f in dataclasses.fields(getattr(trained, section))}
        values = saved.get(section) if isinstance(saved.get(section), dict) else {}
        apply_mapping(trained, {key: value for key, value in values.items() if key in known}, str(checkpoint),
                      default_section=section)
    for key in RUNTIME_MODEL_KEYS:
        setattr(trained.model, key, getattr(cfg.model, key))
    changed = [f"{section}.{key}={value!r} (config: {getattr(getattr(cfg, section), key)!r})"
               for section in ("model", "hyper") for key, value in vars(getattr(trained, section)).items()
               if getattr(getattr(cfg, section), key) != value]
    data = cfg.data
    saved_clip_len = saved.get("data", {}).get("clip_len") if isinstance(saved.get("data"), dict) else None
    if data.clip_len > trained.model.maxlen and isinstance(saved_clip_len, int):  # clips the model cannot take
        changed.append(f"data.clip_len={saved_clip_len} (config: {data.clip_len}, longer than model.maxlen)")
        data = dataclasses.replace(data, clip_len=saved_clip_len)
    if not changed:
        return cfg
    log.info(f"{checkpoint} was trained with other model settings than the config; using the checkpoint's: "
             f"{', '.join(changed)}")
    return validate(dataclasses.replace(cfg, data=data, model=trained.model, hyper=trained.hyper))


def with_backbone_of(cfg: Config, backbone_ckpt) -> tuple[Config, str]:
    """Finetuning: `cfg` with the backbone settings (those that shape its weights, BACKBONE_SETTING_KEYS) that
    `backbone_ckpt` was trained with: a backbone.bin of pretrain_action.py, or a training checkpoint of ours.
    Where they differ from the config's, the checkpoint wins, and the line returned with the config names them
    (for the run's log; empty when nothing differs); the head and every other setting stay the config's. A
    published or converted checkpoint holds none: `cfg` as it is."""
    state = load_checkpoint(backbone_ckpt)
    if not isinstance(state, dict):
        return cfg, ""
    if isinstance(state.get("backbone_config"), dict):
        saved = state["backbone_config"]
        values = {key: saved[name] for name, key in BACKBONE_SETTING_KEYS.items() if name in saved}
        if "version" in values:  # with_hypergraph
            values["version"] = 2 if values["version"] else 1
        if "hyper.joint_label" in values:  # the backbone's one labelling
            values["hyper.joint_label"] = [list(values["hyper.joint_label"])]
    elif isinstance(state.get("config"), dict):
        flat = {f"{section}.{key}": value for section in ("model", "hyper")
                for key, value in (state["config"].get(section) or {}).items()}
        values = {key: flat[name] for key in BACKBONE_SETTING_KEYS.values()
                  if (name := key if "." in key else f"model.{key}") in flat}
    else:
        return cfg, ""
    current = {key: getattr(cfg.hyper, key[6:]) if key.startswith("hyper.") else getattr(cfg.model, key)
               for key in values}
    changed = {key: value for key, value in values.items() if current[key] != value}
    if not changed:
        return cfg, ""
    note = (f"{backbone_ckpt} was trained with other backbone settings than the config; using its: "
            + ", ".join(f"{key}={value!r} (config: {current[key]!r})" for key, value in changed.items()))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model), hyper=dataclasses.replace(cfg.hyper))
    apply_mapping(cfg, {"model": {k: v for k, v in changed.items() if "." not in k},
                        "hyper": {k[6:]: v for k, v in changed.items() if k.startswith("hyper.")}}, str(backbone_ckpt))
    return validate(cfg), note


@dataclass
class Trained:
    model: ActionNet  # in eval mode, on the device
    val_set: ActionDataset  # the config's validation split
    class_names: list[str]
    cfg: Config  # the config with the checkpoint's model settings (with_checkpoint_model)


def load_trained(cfg: Config, checkpoint, device: torch.device = torch.device("cpu"), micro_batch: int = 0,
                 single_clip: bool = False, split: str = None) -> Trained:
    """The config's model (with the checkpoint's own model settings, `with_checkpoint_model`) with the weights
    of `checkpoint` (ours, converted or published; anything that does not fit is a one-line error), in eval
    mode on `device`, with the validation split of the config (or `split`; `single_clip`: one evenly spaced
    clip per sample, whatever data.num_clips says) and its class names."""
    state = load_checkpoint(checkpoint)
    cfg = with_checkpoint_model(cfg, checkpoint, state)
    data = dataclasses.replace(cfg.data, num_clips=1) if single_clip else cfg.data
    val_set = ActionDataset(open_store(cfg.data), data, train=False, seed=cfg.train.seed, split=split)
    names = class_names(cfg.data.action_classes, cfg.data.label_map)
    model = action_model(cfg)
    note = load_model_weights(model, checkpoint, state)
    if note:
        log.info(note)
    return Trained(model.set_micro_batch(micro_batch).to(device).eval(), val_set, names, cfg)
