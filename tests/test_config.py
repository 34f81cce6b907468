"""The config tree: the published command lines, precedence, validation and round trips."""
import logging
import re
from pathlib import Path

import pytest
import yaml
from video_helpers import load_script

from lib.cli import build_parser, config_from_args
from lib.config import Config, load_yaml_config, save_config
from lib.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs/action").glob("*_NTU*_small.yaml"))
HYPER = [ROOT / f"hyper_config/method2/manual_joint_label{k}.yaml" for k in (1, 2)]
LABELS = {1: [0, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3, 4, 4, 4, 5, 5, 5], 2: [0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]}


def parse(argv, command: str = "train") -> Config:
    return config_from_args(build_parser("test", command).parse_args([str(a) for a in argv]))


def seed_commands(config: Path, hyper: Path) -> list[tuple[str, list]]:
    """The seed README's commands (train, resume, finetune, evaluate, vis, deploy): (command, arguments)."""
    common = ["--config", config, "--hyper_cfg", hyper, "--hyper_relation_bias", "uniform", "--version", "2"]
    return [
        ("train", common[:2] + ["--checkpoint", "checkpoint/action/run"] + common[2:]),
        ("train", common[:2] + ["--checkpoint", "checkpoint/action/run"] + common[2:]
         + ["-r", "checkpoint/action/run/latest_epoch.bin"]),
        ("train", common + ["--checkpoint", "checkpoint/action/ft_NTU60_xsub"]),
        ("evaluate", common + ["--evaluate", "checkpoint/action/run/best_epoch.bin"]),
        ("visualise", common + ["--evaluate", "checkpoint/action/run/best_epoch.bin"]),
        ("export", common + ["--evaluate", "ckpt.bin", "--deployment", "out/model.onnx"]),
    ]


def test_there_are_eight_seed_configs():
    names = {p.stem for p in CONFIGS}
    assert names == {f"{kind}_{ds}_{split}_small" for kind in ("train", "ft")
                     for ds in ("NTU60", "NTU120") for split in ("xsub", "xview")}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("hyper", [1, 2])
def test_seed_commands_parse_with_published_values(config, hyper):
    for command, argv in seed_commands(config, HYPER[hyper - 1]):
        cfg = parse(argv, command)
        is_ft = config.stem.startswith("ft_")
        is_ntu120 = "NTU120" in config.stem
        assert cfg.name == config.stem
        assert cfg.hyper.joint_label == [LABELS[hyper]]
        assert (cfg.model.version, cfg.model.hyper_relation_bias) == (2, "uniform")
        assert cfg.data.dataset == ("ntu120_hrnet" if is_ntu120 else "ntu60_hrnet")
        assert cfg.data.action_classes == (120 if is_ntu120 else 60)
        expected_split = "xsub" if "xsub" in config.stem else ("xset" if is_ntu120 else "xview")
        assert cfg.data.data_split == expected_split
        assert cfg.train.finetune is is_ft
        assert cfg.train.lr_head == pytest.approx(8e-4 if is_ft else 8e-5)
        assert cfg.train.lr_backbone == pytest.approx(8e-5)
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.weight_decay, cfg.train.lr_decay) == (300, 8, 0.01, 0.99)
        assert cfg.model.maxlen == cfg.data.clip_len == 243
        assert (cfg.model.depth, cfg.model.dim_rep, cfg.model.num_heads, cfg.model.mlp_ratio) == (6, 128, 8, 2.0)
        assert cfg.data.scale_range_train == [1.0, 3.0] and cfg.data.scale_range_test == [2.0, 2.0]
    if config.stem.startswith("ft_"):
        assert "backbone_ckpt" in yaml.safe_load(config.read_text())


def test_precedence_defaults_yaml_hyper_flags_set(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("epochs: 7\nseed: 1\nclip_len: 64\nmaxlen: 64\n")
    hyper = tmp_path / "hyper.yaml"
    hyper.write_text(f"joint_label: [{LABELS[2]}]\n")
    cfg = parse(["--config", task])
    assert cfg.train.epochs == 7 and cfg.train.seed == 1 and cfg.train.batch_size == 8  # yaml over defaults
    assert cfg.hyper.joint_label == [LABELS[1]]  # default labelling without --hyper_cfg
    cfg = parse(["--config", task, "--hyper_cfg", hyper, "--seed", "5", "--version", "1", "--device", "cpu"])
    assert cfg.hyper.joint_label == [LABELS[2]]
    assert (cfg.train.seed, cfg.model.version, cfg.train.device) == (5, 1, "cpu")
    cfg = parse(["--config", task, "--seed", "5", "--set", "seed=9", "--set", "model.version=2", "--version", "1",
                 "--set", "epochs=3", "--set", "train.epochs=4"])
    assert (cfg.train.seed, cfg.model.version, cfg.train.epochs) == (9, 2, 4)  # --set last, in order


def test_set_values_are_yaml_and_keys_may_be_dotted(tmp_path):
    cfg = parse(["--config", CONFIGS[0], "--set", "scale_range_train=[1, 2]", "--set", "lr_head=1e-4",
                 "--set", "data.clip_len=64", "--set", "maxlen=64", "--set", "partial_train=[STEblocks.5, TTEblocks.5]",
                 "--set", "backbone_ckpt=ckpt/pose.bin", "--set", "random_move=false",
                 "--set", "hyper.joint_label=[[0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1]]"])
    assert cfg.data.scale_range_train == [1.0, 2.0]
    assert cfg.train.lr_head == pytest.approx(1e-4) and isinstance(cfg.train.lr_head, float)
    assert cfg.data.clip_len == 64 and cfg.model.maxlen == 64
    assert cfg.train.partial_train == ["STEblocks.5", "TTEblocks.5"]
    assert cfg.train.backbone_ckpt == "ckpt/pose.bin" and cfg.data.random_move is False
    assert cfg.hyper.joint_label == [[0] * 11 + [1] * 6]
    assert parse(["--config", CONFIGS[0], "--backbone_ckpt", "x.bin"]).train.backbone_ckpt == "x.bin"


@pytest.mark.parametrize("assignment, fragment", [
    ("epoch=3", "did you mean 'epochs'"),
    ("lr=0.001", "did you mean 'lr_backbone' and 'lr_head'?"),  # another toolkit's name for both
    ("train.num_epochs=3", "did you mean 'epochs'?"),
    ("train.lr_bakbone=0.1", "did you mean 'train.lr_backbone'"),
    ("data.epochs=3", "unknown config key 'data.epochs'"),
    ("epochs=abc", "must be an integer"),
    ("epochs=2.5", "must be an integer"),
    ("random_move=maybe", "must be true or false"),
    ("model.version=3", "one of 1, 2"),
    ("hyper_relation_bias=full", "one of 'none', 'uniform'"),
    ("clip_len=0", "must be >= 1"),
    ("lr_decay=1.5", "<= 1"),
    ("lr_head=0", "must be > 0"),
    ("dropout_ratio=1", "< 1"),
    ("data_split=xset", "only for NTU120"),
    ("scale_range_test=[3, 2]", "0 < low <= high"),
    ("clip_len=300", "maxlen (243) must be at least data.clip_len (300)"),
    ("num_heads=5", "divisible"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
    ("hyper.joint_label=[[0,1,2]]", "17 entries"),
    ("hyper.joint_label=[[0,0,0,0,0,0,0,0,0,0,0,0,2,2,2,2,2]]", "0..E-1"),
    ("hyper.hyper_head=2", "one of 1"),
    ("model_version=embedding", "one of 'class', 'embed'"),
    ("epochs", "expects KEY=VALUE"),
    ("epochs=[1", "not valid YAML"),
])
def test_bad_values_give_one_line_errors_naming_the_key(assignment, fragment):
    with pytest.raises(UserError) as info:
        parse(["--config", CONFIGS[-1], "--set", assignment])
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_ntu120_xview_says_use_xset():
    ntu120 = ROOT / "configs/action/train_NTU120_xsub_small.yaml"
    with pytest.raises(UserError, match="NTU120 has no X-View split: use data_split: xset"):
        parse(["--config", ntu120, "--set", "data_split=xview"])


def test_unknown_key_in_yaml_file_names_file_and_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlr_bakbone: 0.1\n")
    with pytest.raises(UserError, match=r"unknown config key 'lr_bakbone' \(.*bad.yaml\); did you mean 'lr_backbone'"):
        parse(["--config", bad])
    bad.write_text("train:\n  epochs: [1, 2]\n")
    with pytest.raises(UserError, match="'train.epochs' must be an integer"):
        parse(["--config", bad])


PUBLISHED_CONFIG = """# a published config file as it was distributed, with its keys that had no effect
finetune: False
partial_train: null
log: run_action
epochs: 300
batch_size: 8
lr_backbone: 0.00008
lr_head: 0.00008
weight_decay: 0.01
lr_decay: 0.99
ckpt_save_frequency: 5
quickdebug: False
dim_feat: 128
mlp_ratio: 2
num_heads: 8
att_fuse: True
maxlen: 243
depth: 6
dim_rep: 128
dropout_ratio: 0.5
hidden_dim: 1024
model_version: class
num_joints: 17
dataset: ntu60_hrnet
data_split: xsub
action_classes: 60
clip_len: 243
random_move: True
scale_range_train: [ 1, 3 ]
scale_range_test: [ 2, 2 ]
"""


def test_published_config_files_load_as_they_are(tmp_path):
    published = tmp_path / "train_NTU60_xsub_small.yaml"
    published.write_text(PUBLISHED_CONFIG)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lib.config")
    logger.addHandler(handler)
    try:
        cfg = parse(["--config", published])
    finally:
        logger.removeHandler(handler)
    ours = parse(["--config", ROOT / "configs/action/train_NTU60_xsub_small.yaml"])
    assert cfg == ours
    notes = [r.getMessage() for r in records]
    assert len(notes) == 2 and all("has no effect" in n and "ignored" in n for n in notes)
    assert {n.split("'")[1] for n in notes} == {"dim_feat", "att_fuse"}
    never_published = tmp_path / "typo.yaml"
    never_published.write_text(PUBLISHED_CONFIG + "dim_feats: 128\n")
    with pytest.raises(UserError, match="unknown config key 'dim_feats'"):
        parse(["--config", never_published])


def test_missing_or_invalid_files(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        parse(["--config", tmp_path / "nope.yaml"])
    with pytest.raises(UserError, match="hyper config file not found"):
        parse(["--config", CONFIGS[0], "--hyper_cfg", tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [3\n")
    with pytest.raises(UserError, match="not valid YAML"):
        parse(["--config", broken])
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        parse(["--config", listing])


# Per script: flags its --help must list, and flags of other scripts it must not
SCRIPT_FLAGS = {
    "train_action.py": (["--checkpoint", "--resume", "--backbone_ckpt", "--device"], ["--evaluate", "--deployment"]),
    "pretrain_action.py": (["--checkpoint", "--resume"], ["--evaluate", "--deployment", "--backbone_ckpt"]),
    "evaluate_action.py": (["--evaluate", "--ensemble", "--gallery"],
                           ["--checkpoint", "--resume", "--deployment", "--backbone_ckpt"]),
    "vis_action_attn.py": (["--evaluate", "--attn-dir"], ["--checkpoint", "--resume", "--deployment", "--backbone_ckpt"]),
    "vis_reconstruction.py": (["--evaluate", "--mask-seed"],
                              ["--checkpoint", "--resume", "--deployment", "--backbone_ckpt"]),
    "deployment/deployment_action.py": (["--evaluate", "--deployment", "--quantize"],
                                        ["--checkpoint", "--resume", "--backbone_ckpt", "--ensemble"]),
    "lib/data/summary.py": ([], ["--checkpoint", "--resume", "--evaluate", "--deployment", "--backbone_ckpt",
                                "--device"]),
}


@pytest.mark.parametrize("script", list(SCRIPT_FLAGS))
def test_each_script_offers_only_the_flags_it_uses(script, capsys):
    """The options section of `--help`: the published flags of every script (--config, --hyper_cfg,
    --hyper_relation_bias, --version, --set), the script's own, and none that only another script reads."""
    with pytest.raises(SystemExit) as stop:
        load_script(script).main(["--help"])
    assert stop.value.code == 0
    options = capsys.readouterr().out.split("options:", 1)[1]
    offered = set(re.findall(r"(?m)^  (?:-\w+(?: \S+)?, )?(--[\w-]+)", options))
    shown, hidden = SCRIPT_FLAGS[script]
    assert {"--config", "--hyper_cfg", "--hyper_relation_bias", "--version", "--set", *shown} <= offered
    assert not offered & set(hidden), offered & set(hidden)


def test_cli_rejects_bad_choices():
    parser = build_parser("test", "train")
    for argv in (["--config", "x", "--hyper_relation_bias", "full"], ["--config", "x", "--version", "3"], []):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


@pytest.mark.parametrize("config", CONFIGS + [ROOT / "configs/action/demo_synthetic.yaml"], ids=lambda p: p.stem)
def test_resolved_config_round_trips_through_yaml(config, tmp_path):
    cfg = parse(["--config", config, "--hyper_cfg", HYPER[1], "--seed", "3", "--set", "partial_train=[head]",
                 "--set", "lr_head=3e-4", "--set", "model.j2e_layout=reference"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    written = yaml.safe_load(out.read_text())
    assert set(written) == {"name", "data", "model", "train", "hyper", "pretrain", "fewshot"}
    again = load_yaml_config(out)
    assert again == cfg
    save_config(again, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == out.read_text()
