"""The configuration tree: typed dataclasses built from the task YAML, the hyper YAML and the command line.

Precedence, lowest first: the defaults below, the task YAML (`--config`), the hyper YAML
(`--hyper_cfg`), the named command-line flags (`--version`, `--seed`, ...), then `--set KEY=VALUE`.

The task YAML may be flat, as the published configs are (`epochs: 300`), or nested by section
(`train: {epochs: 300}`); a flat key is looked up in the `data`, `model`, `train`, `pretrain` and `fewshot`
sections, whose field names are unique. Hyper-config keys always live in the `hyper` section (`--set hyper.joint_label=...`).
`save_config` writes the nested form, which `load_yaml_config` reads back unchanged.
"""
import dataclasses
import difflib
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from lib.errors import UserError

log = logging.getLogger(__name__)

H36M_NUM_JOINTS = 17
# Keys of the published config files that the published code never used for action recognition:
# accepted, so that those files load as they are, and ignored with one log line each.
PUBLISHED_WITHOUT_EFFECT = {
    "dim_feat": "the published code only asserted it in the export",
    "att_fuse": "a MotionBERT setting the action model never read",
}
MANUAL_JOINT_LABEL1 = [[0, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3, 4, 4, 4, 5, 5, 5]]


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    """Field metadata: allowed numeric range (inclusive unless *_open)."""
    return {"range": (lo, hi, lo_open, hi_open)}


@dataclass
class DataConfig:
    dataset: str = "ntu60_hrnet"  # pickle stem: {data_root}/{dataset}.pkl
    data_root: str = "data/action"
    # The protocol (lib.data.dataset.protocol_splits): xsub, xview (NTU60), xset (NTU120): splits {data_split}_train
    # and _val; split1, split2, split3 (UCF101, HMDB51): trainN and testN; official (FineGYM, Diving48,
    # Kinetics-400): train and val or test; custom: the splits lib/data/build_dataset.py wrote; oneshot: the
    # NTU120 one-shot protocol's splits, derived from the pickle (lib/data/oneshot.py).
    data_split: str = "xsub"
    # Kinetics-400 (lib/data/kinetics.py): the folder of the unzipped kpfiles (null: {data_root}/kpfiles), and
    # PYSKL's box_thr: skeletons whose detection box scored lower are dropped (null: all are kept).
    kpfiles: Optional[str] = None
    box_thr: Optional[float] = field(default=None, metadata=_range(0, 1))
    action_classes: int = field(default=60, metadata=_range(2))
    clip_len: int = field(default=243, metadata=_range(1))
    random_move: bool = True
    scale_range_train: list[float] = field(default_factory=lambda: [1.0, 3.0])
    scale_range_test: list[float] = field(default_factory=lambda: [2.0, 2.0])
    # True keeps the published bug: confidence stays in COCO order while x, y become H36M order.
    legacy_conf_order: bool = False
    # The model's input: joint coordinates, bones (joint minus parent), or their frame-to-frame motion.
    stream: Literal["joint", "bone", "joint_motion", "bone_motion"] = "joint"
    # Test-time augmentation: clips per sample (the first evenly spaced, the others resampled at random
    # with fixed seeds) and left-right flipping; softmax probabilities are averaged. 1 and false: the
    # published single-clip protocol.
    num_clips: int = field(default=1, metadata=_range(1))
    flip_test: bool = False
    # One class name per line; null picks the NTU60/NTU120 list by action_classes.
    label_map: Optional[str] = None
    # DataLoader processes; null: automatic (engine.runtime.loader_workers): 2 on the CPU, on CUDA enough to
    # feed the compiled model twice over, as far as the cores allow.
    num_workers: Optional[int] = field(default=None, metadata=_range(0))
    # Train on this share of the training split, the same share of every class (seeded by train.seed).
    label_fraction: float = field(default=1.0, metadata=_range(0, 1, lo_open=True))

    @property
    def pickle_path(self) -> Path:
        return Path(self.data_root) / f"{self.dataset}.pkl"

    @property
    def kpfiles_folder(self) -> Path:
        return Path(self.kpfiles) if self.kpfiles else Path(self.data_root) / "kpfiles"


@dataclass
class ModelConfig:
    version: Literal[1, 2] = 2  # 2: joint-to-joint + hypergraph branch; 1: without the hypergraph branch
    hyper_relation_bias: Literal["none", "uniform"] = "uniform"  # init of the joint-to-joint bias
    dim_rep: int = field(default=128, metadata=_range(1))
    depth: int = field(default=6, metadata=_range(1))
    num_heads: int = field(default=8, metadata=_range(1))
    mlp_ratio: float = field(default=2.0, metadata=_range(0, lo_open=True))
    maxlen: int = field(default=243, metadata=_range(1))  # length of the temporal positional embedding
    drop_path_rate: float = field(default=0.1, metadata=_range(0, 1, hi_open=True))
    # The published dropout inside the spatial blocks (p = each block's drop-path rate), as published; false: none.
    block_dropout: bool = True
    dropout_ratio: float = field(default=0.5, metadata=_range(0, 1, hi_open=True))
    hidden_dim: int = field(default=1024, metadata=_range(1))
    # class: the classification head (the published default); embed: an L2-normalised embedding of
    # embed_dim numbers, trained with a supervised contrastive loss (lib/engine/embedding.py, docs/fewshot.md)
    model_version: Literal["class", "embed"] = "class"
    embed_dim: int = field(default=128, metadata=_range(1))
    num_joints: Literal[17] = 17
    j2e_layout: Literal["standard", "reference"] = "standard"  # reference: the published head split
    j2j_adjacency: bool = True
    j2e_main: bool = True
    j2e_bias: bool = True
    # How attention is computed (the same numbers every way; lib/model/attention.py): auto picks by the number
    # of keys, from the measurements in benchmarks/README.md ("Attention implementations").
    attention: Literal["auto", "explicit", "sdpa", "sdpa_cudnn", "sdpa_efficient", "sdpa_math", "flex"] = "auto"


@dataclass
class TrainConfig:
    epochs: int = field(default=300, metadata=_range(1))
    batch_size: int = field(default=8, metadata=_range(1))
    lr_backbone: float = field(default=8e-5, metadata=_range(0, lo_open=True))
    lr_head: float = field(default=8e-5, metadata=_range(0, lo_open=True))
    weight_decay: float = field(default=0.01, metadata=_range(0))
    lr_decay: float = field(default=0.99, metadata=_range(0, 1, lo_open=True))
    ckpt_save_frequency: int = field(default=5, metadata=_range(1))
    # Also write latest_epoch.bin every this many minutes of training within an epoch, so that a crash loses
    # at most that much work (0: only at the end of each epoch and on SIGINT / SIGTERM). The cost of one save at
    # the published size: benchmarks/bench_faults.py (docs/distributed.md).
    ckpt_every_minutes: float = field(default=10.0, metadata=_range(0))
    # Under torchrun: the longest a process waits for the others in a collective operation before the run
    # stops with an error naming the operation (a peer that died or hung); torch's own limit is 30 minutes.
    dist_timeout_minutes: float = field(default=10.0, metadata=_range(0, lo_open=True))
    # The validation metric that picks best_epoch.bin: top1, or mean_class_accuracy (FineGYM's papers report it).
    best_metric: Literal["top1", "mean_class_accuracy"] = "top1"
    quickdebug: bool = False
    finetune: bool = False
    backbone_ckpt: Optional[str] = None
    partial_train: Optional[list[str]] = None  # name patterns of backbone parameters left trainable
    linear_probe: bool = False  # train the head only, on a frozen backbone (kept in eval mode)
    log: str = "run_action"
    seed: int = field(default=0, metadata=_range(0))
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    amp: bool = True  # bf16 autocast on CUDA (no effect on the CPU)
    # torch.compile the model for training and validation (pretraining too); auto: on CUDA, eager on the CPU
    # (lib/engine/compiled.py). A model that fails to compile runs eager, with one warning line.
    compile: Literal["auto", True, False] = "auto"
    # Clips per backbone pass in training and evaluation (the head and its BatchNorm see the whole batch).
    # Fewer than batch_size: training recomputes each chunk's activations in the backward pass (activation
    # checkpointing): less memory for one more backbone forward. null: automatic (engine.runtime.micro_batch_size),
    # the whole batch on CUDA; on the CPU the fastest choice measured by batch size (benchmarks/README.md):
    # the whole batch while its model-width activations stay under glibc's mmap ceiling, else the most clips
    # whose widest activation stays under it, above which allocations get fresh pages from the kernel and
    # page faults dominate the step.
    micro_batch: Optional[int] = field(default=None, metadata=_range(1))


@dataclass
class FewShotConfig:
    """Embedding models (model_version: embed; lib/fewshot/)."""
    temperature: float = field(default=0.1, metadata=_range(0, lo_open=True))  # of the supervised contrastive loss
    # clips of each class in a training batch (the per-class sampler); batch_size must be a multiple of it
    clips_per_class: int = field(default=2, metadata=_range(2))


@dataclass
class HyperConfig:
    spatial_mode: Literal["hyper_dependent_common"] = "hyper_dependent_common"
    hyper_head: Literal[1] = 1
    hyper_multi_merge_mode: Literal["none"] = "none"
    joint_label: list[list[int]] = field(default_factory=lambda: [list(l) for l in MANUAL_JOINT_LABEL1])
    dataset: Literal["h36m"] = "h36m"  # joint order the labels refer to


@dataclass
class PretrainConfig:
    """Masked motion prediction (pretrain_action.py; lib/model/masked_motion.py)."""
    mask_ratio: float = field(default=0.9, metadata=_range(0, 1, lo_open=True, hi_open=True))  # share of tokens hidden
    segment: int = field(default=3, metadata=_range(1))  # frames per token; must divide data.clip_len
    tau: float = field(default=0.8, metadata=_range(0, lo_open=True))  # motion-aware masking temperature
    decoder_dim: int = field(default=128, metadata=_range(1))
    decoder_depth: int = field(default=2, metadata=_range(1))
    decoder_heads: int = field(default=8, metadata=_range(1))
    # validation clips in reconstruction.png, drawn when a run ends (lib/vis/reconstruction.py); 0: none
    picture_clips: int = field(default=3, metadata=_range(0))


@dataclass
class Config:
    name: str = "config"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hyper: HyperConfig = field(default_factory=HyperConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)


FLAT_SECTIONS = ("data", "model", "train", "pretrain", "fewshot")
SECTIONS = FLAT_SECTIONS + ("hyper",)


def _section_fields(section: str) -> list[str]:
    cls = typing.get_type_hints(Config)[section]
    return [f.name for f in dataclasses.fields(cls)]


FLAT_KEY_SECTION = {key: section for section in FLAT_SECTIONS for key in _section_fields(section)}
assert len(FLAT_KEY_SECTION) == sum(len(_section_fields(s)) for s in FLAT_SECTIONS), "flat keys must be unique"
ALL_KEYS = ["name"] + list(SECTIONS) + list(FLAT_KEY_SECTION) + [
    f"{s}.{k}" for s in SECTIONS for k in _section_fields(s)]


# ---------------------------------------------------------------------------------------------------------
# Typed values


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"null or {_describe(inner[0])}"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])} values"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _coerce(value, tp, key: str, source: str):
    """Check `value` against the annotation `tp`; return it converted (int -> float, '1e-4' -> 1e-4)."""

    def bad():
        return UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r} ({source})")

    origin = typing.get_origin(tp)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            raise bad()
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, key, source) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise TypeError(f"unsupported config annotation {tp!r}")


def _check_range(value, meta: dict, key: str, source: str):
    if "range" not in meta or value is None:  # None: an Optional field left unset
        return
    lo, hi, lo_open, hi_open = meta["range"]
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        lo_txt = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_txt = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        allowed = " and ".join(t for t in (lo_txt, hi_txt) if t)
        raise UserError(f"config key '{key}' must be {allowed}, got {value!r} ({source})")


# Names that other toolkits use for settings that are split or named otherwise here.
OTHER_TOOLKITS_NAMES = {"lr": ["lr_backbone", "lr_head"], "learning_rate": ["lr_backbone", "lr_head"],
                        "max_epochs": ["epochs"], "num_epochs": ["epochs"], "workers": ["num_workers"]}


def _unknown_key(key: str, source: str) -> UserError:
    close = OTHER_TOOLKITS_NAMES.get(key.rsplit(".", 1)[-1]) or difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.6)
    hint = (f"; did you mean {' and '.join(repr(k) for k in close)}?" if close
            else "; docs/configuration.md lists the valid keys")
    return UserError(f"unknown config key '{key}' ({source}){hint}")


def _set_field(cfg: Config, section: Optional[str], key: str, value, source: str):
    """Set one leaf, validating its type and range. `section` None means a top-level key."""
    target = cfg if section is None else getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(target)}
    full_key = key if section is None else f"{section}.{key}"
    if key not in fields:
        raise _unknown_key(full_key, source)
    tp = typing.get_type_hints(type(target))[key]
    value = _coerce(value, tp, full_key, source)
    _check_range(value, fields[key].metadata, full_key, source)
    setattr(target, key, value)


def apply_mapping(cfg: Config, mapping: dict, source: str, default_section: Optional[str] = None):
    """Merge a (flat or nested) mapping into `cfg`. `default_section` forces every key into one section."""
    if not isinstance(mapping, dict):
        raise UserError(f"{source} must hold a mapping of config keys, got {type(mapping).__name__}")
    for key, value in mapping.items():
        key = str(key)
        if default_section is not None:
            _set_field(cfg, default_section, key, value, source)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"config section '{key}' must be a mapping ({source})")
            for sub_key, sub_value in value.items():
                _set_field(cfg, key, str(sub_key), sub_value, source)
        elif key == "name":
            _set_field(cfg, None, key, value, source)
        elif key in FLAT_KEY_SECTION:
            _set_field(cfg, FLAT_KEY_SECTION[key], key, value, source)
        elif key in PUBLISHED_WITHOUT_EFFECT:
            log.warning(f"config key '{key}' ({source}) has no effect: {PUBLISHED_WITHOUT_EFFECT[key]}; ignored")
        else:
            raise _unknown_key(key, source)


def apply_override(cfg: Config, assignment: str):
    """Apply one `--set KEY=VALUE`; VALUE is parsed as YAML, KEY may be dotted (`train.epochs`)."""
    source = f"--set {assignment}"
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE, got '{assignment}'")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {key}: the value '{text}' is not valid YAML") from None
    section, dot, leaf = key.partition(".")
    if dot:
        if section not in SECTIONS:
            raise _unknown_key(key, source)
        _set_field(cfg, section, leaf, value, source)
    else:
        apply_mapping(cfg, {key: value}, source)


def read_yaml(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {path} is not valid YAML{where}") from None
    return {} if data is None else data


# ---------------------------------------------------------------------------------------------------------
# Cross-field validation


def validate(cfg: Config) -> Config:
    """Checks that involve several keys. Raises UserError; returns cfg for chaining."""
    d, m, h = cfg.data, cfg.model, cfg.hyper
    is_ntu120 = "ntu120" in d.dataset.lower()
    if not re.fullmatch(r"xsub|xview|xset|custom|oneshot|official|split\d+", d.data_split):
        raise UserError(f"data_split must be xsub, xview, xset, split1, split2, split3, official, custom or oneshot, "
                        f"got '{d.data_split}' (docs/datasets.md)")
    if is_ntu120 and d.data_split == "xview":
        raise UserError("NTU120 has no X-View split: use data_split: xset (the cross-setup protocol) "
                        "(--set data_split=xset)")
    if not is_ntu120 and d.data_split == "xset":
        raise UserError(f"data_split 'xset' exists only for NTU120, but dataset is '{d.dataset}': "
                        "use xsub or xview")
    for key in ("scale_range_train", "scale_range_test"):
        lo_hi = getattr(d, key)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise UserError(f"config key 'data.{key}' must be [low, high] with 0 < low <= high, got {lo_hi}")
    if m.maxlen < d.clip_len:
        raise UserError(f"model.maxlen ({m.maxlen}) must be at least data.clip_len ({d.clip_len}): "
                        "the temporal positional embedding must cover the clip")
    if m.dim_rep % m.num_heads:
        raise UserError(f"model.dim_rep ({m.dim_rep}) must be divisible by model.num_heads ({m.num_heads})")
    if m.version == 2 and not (m.j2e_main or m.j2e_bias):
        raise UserError("model.j2e_main and model.j2e_bias cannot both be false with version 2 "
                        "(the joint-to-hyperedge attention would have no scores); use --version 1 instead")
    if cfg.train.linear_probe and cfg.train.partial_train:
        raise UserError("train.linear_probe freezes the whole backbone; it cannot be combined with partial_train")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.train.device):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got '{cfg.train.device}'")
    if d.data_split == "oneshot" and not is_ntu120:
        raise UserError(f"data_split 'oneshot' is the NTU120 one-shot protocol, but dataset is '{d.dataset}': "
                        "use an ntu120 pickle")
    if m.model_version == "embed":
        per_class = cfg.fewshot.clips_per_class
        if cfg.train.batch_size % per_class or cfg.train.batch_size < 2 * per_class:
            raise UserError(f"an embedding model trains on batches of whole classes: batch_size "
                            f"({cfg.train.batch_size}) must be a multiple of fewshot.clips_per_class ({per_class}) "
                            "covering at least 2 classes")
    validate_joint_label(h.joint_label)
    return cfg


def validate_joint_label(joint_label: list[list[int]]):
    if len(joint_label) != 1:
        raise UserError(f"hyper.joint_label must hold exactly one labelling (hyper_head: 1), got {len(joint_label)}")
    labels = joint_label[0]
    if len(labels) != H36M_NUM_JOINTS:
        raise UserError(f"hyper.joint_label must give one hyperedge per joint ({H36M_NUM_JOINTS} entries), "
                        f"got {len(labels)}")
    used = sorted(set(labels))
    if used != list(range(len(used))):
        raise UserError(f"hyper.joint_label must use the hyperedge ids 0..E-1, each at least once, got {labels}")


# ---------------------------------------------------------------------------------------------------------
# Loading and saving


def load_yaml_config(path, hyper_path=None, flags: Optional[dict] = None, overrides=()) -> Config:
    """Build the config: defaults < task YAML < hyper YAML < flags {dotted key: value} < overrides."""
    cfg = Config(name=Path(path).stem)
    apply_mapping(cfg, read_yaml(path, "config file"), str(path))
    if hyper_path is not None:
        apply_mapping(cfg, read_yaml(hyper_path, "hyper config file"), str(hyper_path), default_section="hyper")
    for key, value in (flags or {}).items():
        if value is not None:
            section, _, leaf = key.partition(".")
            _set_field(cfg, section, leaf, value, f"--{leaf}")
    for assignment in overrides:
        apply_override(cfg, assignment)
    return validate(cfg)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path):
    """Write the resolved config as nested YAML; `load_yaml_config(path)` gives back an equal Config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=False)
