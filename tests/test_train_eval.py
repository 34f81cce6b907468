"""The training / evaluation engine through the published commands (README-SEED.md, DESIGN.md 2, 3.11, 7).

Every training here is a verbatim seed command (train_action.py / evaluate_action.py with --config,
--checkpoint, --hyper_cfg, --hyper_relation_bias, --version, -r, --evaluate) plus `--set` overrides that
shrink the model and point it at a small synthetic pickle, so the whole file runs on 2 CPU cores.
The long runs are real subprocesses (cwd = the project root); cheap checks call the entry scripts'
`main` in-process through `lib.cli.run_main`, which is exactly what `sys.exit(run_main(main))` does.

Expected values are computed here independently (metrics from predictions.npz with numpy, learning rates
from the decay rule, counts from the state dicts), never pasted from a run.
"""
import contextlib
import csv
import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import evaluate_action
import train_action
from lib.cli import build_parser, config_from_args, run_main
from lib.config import config_to_dict, load_yaml_config
from lib.data import synthetic
from lib.data.pyskl import load_store
from lib.engine import classification as engine_classification
from lib.engine.classification import ClassificationTask
from lib.engine import train as engine_train
from lib.engine.build import action_model

ROOT = Path(__file__).resolve().parents[1]
HYPER = {1: "hyper_config/method2/manual_joint_label1.yaml", 2: "hyper_config/method2/manual_joint_label2.yaml"}
TIMEOUT = 180  # seconds, per subprocess; a healthy run here takes a few seconds
# A model small enough for CPU tests; identical in every run that is compared with another.
TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=8", "maxlen=8", "hidden_dim=32", "num_workers=0",
        "device=cpu"]
DEMO_SAMPLES = 200  # 100 xsub training clips: 50 batches of 2 per epoch, so SIGTERM lands mid-epoch
NTU120_SAMPLES = 240  # two per NTU120 action: both the xsub and the xset halves are non-empty
# The reference run: 3 epochs of 50 batches, a checkpoint every 2 epochs, a learning rate that learns.
REFERENCE_SETS = ["epochs=3", "batch_size=2", "ckpt_save_frequency=2", "lr_backbone=0.002", "lr_head=0.002"]
METRIC_KEYS = ("epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
               "lr_backbone", "lr_head")
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "progress", "config")


# ---------------------------------------------------------------------------------------------------------
# Helpers


def sets(*assignments) -> list[str]:
    argv = []
    for assignment in assignments:
        argv += ["--set", assignment]
    return argv


def train_argv(config, checkpoint, hyper=1, version=2, resume=None, overrides=()):
    """The seed's training command (README-SEED.md 'Train'), in its order, plus --set overrides."""
    argv = ["--config", f"configs/action/{config}.yaml", "--checkpoint", str(checkpoint),
            "--hyper_cfg", HYPER[hyper], "--hyper_relation_bias", "uniform", "--version", str(version)]
    if resume is not None:
        argv += ["-r", str(resume)]
    return argv + sets(*overrides)


def finetune_argv(config, checkpoint, hyper=1, extra=(), overrides=()):
    """The seed's finetuning command (README-SEED.md 'Finetune'): --checkpoint comes last."""
    return (["--config", f"configs/action/{config}.yaml", "--hyper_cfg", HYPER[hyper],
             "--hyper_relation_bias", "uniform", "--version", "2", "--checkpoint", str(checkpoint), *extra]
            + sets(*overrides))


def evaluate_argv(config, ckpt, hyper=1, overrides=(), extra=()):
    """The seed's evaluation command (README-SEED.md 'Evaluation')."""
    return (["--config", f"configs/action/{config}.yaml", "--hyper_cfg", HYPER[hyper],
             "--hyper_relation_bias", "uniform", "--version", "2", "--evaluate", str(ckpt), *extra]
            + sets(*overrides))


# The models are tiny: one thread per process is as fast, and far faster when the cores are shared.
# Every run that is compared bit for bit with another uses the same setting.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_script(script, argv, timeout=TIMEOUT):
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def run_in_process(main, argv, monkeypatch) -> int:
    """What `python SCRIPT argv` does, without starting an interpreter: the exit status."""
    monkeypatch.chdir(ROOT)
    return run_main(main, [str(a) for a in argv])


def expected_config(argv):
    """The config a command line resolves to, built the documented way (lib.cli)."""
    with contextlib.chdir(ROOT):
        return config_from_args(build_parser("test", "train").parse_args([str(a) for a in argv]))


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr


def assert_one_line_error(returncode, stderr, *fragments):
    assert returncode == 2, f"exit {returncode}, stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_metrics(folder) -> list[dict]:
    lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def without_time(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def epoch_lines(log_text: str, epoch: int) -> list[str]:
    return re.findall(rf"^.*\bepoch {epoch}: train loss .*$", log_text, flags=re.M)


def assert_same_tensors(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {len(different)} tensors differ, e.g. {different[:3]}"


def optimizer_tensors(state: dict) -> dict:
    return {f"{p}.{name}": value for p, slots in state["optimizer"]["state"].items()
            for name, value in slots.items() if isinstance(value, torch.Tensor)}


def split_size(pickle_path: Path, split: str) -> int:
    with open(pickle_path, "rb") as f:
        return len(pickle.load(f)["split"][split])



# ---------------------------------------------------------------------------------------------------------
# Fixtures: one small data folder and one reference training run per module


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """demo_tiny.pkl (NTU60 split names, 10 actions) and ntu120_tiny.pkl (xsub_* and xset_*), caches built."""
    root = tmp_path_factory.mktemp("data")
    synthetic.write_pickle(synthetic.generate("demo", seed=0, num_samples=DEMO_SAMPLES), root / "demo_tiny.pkl")
    synthetic.write_pickle(synthetic.generate("ntu120", seed=0, num_samples=NTU120_SAMPLES),
                           root / "ntu120_tiny.pkl")
    for stem in ("demo_tiny", "ntu120_tiny"):
        load_store(root / f"{stem}.pkl")  # build the packed cache once, before any run reads it
    return root


def demo_sets(data: Path) -> list[str]:
    return [f"data_root={data}", "dataset=demo_tiny", *TINY]


def ntu120_sets(data: Path) -> list[str]:
    return [f"data_root={data}", "dataset=ntu120_tiny", *TINY]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """The NTU60 X-Sub seed command with manual_joint_label1, run uninterrupted for 3 epochs."""
    out = tmp_path_factory.mktemp("runs") / "train_NTU60_xsub_small"
    overrides = demo_sets(data) + REFERENCE_SETS
    argv = train_argv("train_NTU60_xsub_small", out, hyper=1, overrides=overrides)
    result = run_script("train_action.py", argv)
    assert_ok(result)
    return {"dir": out, "argv": argv, "overrides": overrides, "result": result, "config": expected_config(argv)}


# ---------------------------------------------------------------------------------------------------------
# 1. Training outputs


def test_seed_training_command_writes_checkpoints_config_log_metrics_and_tensorboard(reference, data):
    out, cfg = reference["dir"], reference["config"]
    assert "Traceback" not in reference["result"].stderr

    # checkpoints: latest, best, and epoch_N.bin only for N a multiple of ckpt_save_frequency (2)
    for name in ("latest_epoch.bin", "best_epoch.bin", "epoch_2.bin"):
        assert (out / name).is_file(), name
    assert not (out / "epoch_1.bin").exists() and not (out / "epoch_3.bin").exists()
    assert not list(out.glob(".*tmp*")), "a temporary file of an atomic save was left behind"

    # config.yaml loads back to the run's settings
    saved = load_yaml_config(out / "config.yaml")
    assert saved == cfg
    assert saved.train.epochs == 3 and saved.train.batch_size == 2 and saved.model.dim_rep == 16
    assert saved.data.data_root == str(data) and saved.data.dataset == "demo_tiny"
    assert saved.hyper.joint_label == yaml.safe_load((ROOT / HYPER[1]).read_text())["joint_label"]

    # metrics.jsonl: one line per epoch, with the learning rate of that epoch
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert set(METRIC_KEYS) <= r.keys()
        assert all(np.isfinite(r[k]) for k in METRIC_KEYS)
        for split in ("train", "val"):
            assert 0 <= r[f"{split}_top1"] <= r[f"{split}_top5"] <= 100
            assert r[f"{split}_loss"] > 0
        assert r["lr_backbone"] == pytest.approx(0.002 * 0.99 ** (r["epoch"] - 1), rel=1e-9)
        assert r["lr_head"] == pytest.approx(0.002 * 0.99 ** (r["epoch"] - 1), rel=1e-9)
    assert [r["best_top1"] for r in records] == list(np.maximum.accumulate([r["val_top1"] for r in records]))
    assert records[-1]["train_loss"] < records[0]["train_loss"], "three epochs at lr 2e-3 should learn"

    # {log}.log: the run's summary with the split sizes, and every epoch line exactly once
    log_text = (out / "run_action.log").read_text()
    train_n = split_size(data / "demo_tiny.pkl", "xsub_train")
    val_n = split_size(data / "demo_tiny.pkl", "xsub_val")
    assert f"{train_n} training / {val_n} validation clips" in log_text
    for epoch in (1, 2, 3):
        assert len(epoch_lines(log_text, epoch)) == 1, log_text
    assert len(re.findall(r"\bepoch \d+: train loss", log_text)) == 3

    # the checkpoints are the states after those epochs
    latest, best, second = load(out / "latest_epoch.bin"), load(out / "best_epoch.bin"), load(out / "epoch_2.bin")
    assert (latest["progress"]["epoch"], latest["progress"]["next_batch"]) == (3, 0)
    assert second["epoch"] == 2
    val_top1 = [r["val_top1"] for r in records]
    assert best["epoch"] == 1 + int(np.argmax(val_top1))  # the first epoch with the highest top-1
    assert best["progress"]["best_score"] == pytest.approx(max(val_top1)) == latest["progress"]["best_score"]
    assert latest["config"] == config_to_dict(cfg)

    # TensorBoard: the same numbers, one point per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for tag, key in (("loss/val", "val_loss"), ("top1/train", "train_top1"), ("lr/backbone", "lr_backbone")):
        points = events.Scalars(tag)
        assert [p.step for p in points] == [1, 2, 3], tag
        assert [p.value for p in points] == pytest.approx([r[key] for r in records], rel=1e-5), tag


def test_checkpoints_load_with_weights_only_and_hold_the_training_state(reference):
    out, cfg = reference["dir"], reference["config"]
    for name in ("latest_epoch.bin", "best_epoch.bin", "epoch_2.bin"):
        state = load(out / name)  # weights_only=True: nothing but tensors and plain containers
        assert set(CHECKPOINT_KEYS) <= state.keys(), name
        assert isinstance(state["rng"]["torch"], torch.Tensor) and state["rng"]["torch"].dtype == torch.uint8
        assert state["config"] == config_to_dict(cfg)
        assert state["scheduler"]["last_epoch"] == state["epoch"]
        model = action_model(cfg)
        model.load_state_dict(state["model"])  # strict: every key, every shape
        optimizer, scheduler = engine_train.make_optimizer(ClassificationTask(cfg).parameter_groups(model), cfg)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # Adam has stepped once per training batch so far (50 per epoch)
        steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
        assert steps == {50.0 * state["epoch"]}, name


def test_ntu120_xview_config_with_label2_and_version1(data, tmp_path):
    """The NTU120 'xview' seed config trains on the X-Set split, with the 3-hyperedge labels and without
    the hypergraph branch; the `log` key names the log file; ckpt_save_frequency 1 keeps every epoch."""
    out = tmp_path / "train_NTU120_xview_small"
    overrides = ntu120_sets(data) + ["epochs=2", "batch_size=8", "ckpt_save_frequency=1", "log=ntu120_run"]
    argv = train_argv("train_NTU120_xview_small", out, hyper=2, version=1, overrides=overrides)
    result = run_script("train_action.py", argv)
    assert_ok(result)

    for name in ("latest_epoch.bin", "epoch_1.bin", "epoch_2.bin", "config.yaml", "ntu120_run.log"):
        assert (out / name).is_file(), name
    assert not (out / "run_action.log").exists()
    saved = load_yaml_config(out / "config.yaml")
    assert saved == expected_config(argv)
    assert (saved.data.data_split, saved.data.action_classes, saved.model.version) == ("xset", 120, 1)
    assert saved.hyper.joint_label == [[0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]]

    log_text = (out / "ntu120_run.log").read_text()
    train_n = split_size(data / "ntu120_tiny.pkl", "xset_train")
    val_n = split_size(data / "ntu120_tiny.pkl", "xset_val")
    assert f"{train_n} training / {val_n} validation clips" in log_text
    assert len(epoch_lines(log_text, 1)) == 1 and len(epoch_lines(log_text, 2)) == 1
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    state = load(out / "latest_epoch.bin")
    assert state["epoch"] == 2
    assert not any("hyper_block" in k for k in state["model"]), "version 1 has no hypergraph branch"
    assert state["model"]["head.fc2.weight"].shape[0] == 120
    assert load(out / "epoch_1.bin")["epoch"] == 1


SEED_CONFIGS = {  # name: (dataset, data_split, action_classes, finetune, lr_head)
    "train_NTU60_xsub_small": ("ntu60_hrnet", "xsub", 60, False, 8e-5),
    "train_NTU60_xview_small": ("ntu60_hrnet", "xview", 60, False, 8e-5),
    "train_NTU120_xsub_small": ("ntu120_hrnet", "xsub", 120, False, 8e-5),
    "train_NTU120_xview_small": ("ntu120_hrnet", "xset", 120, False, 8e-5),
    "ft_NTU60_xsub_small": ("ntu60_hrnet", "xsub", 60, True, 8e-4),
    "ft_NTU60_xview_small": ("ntu60_hrnet", "xview", 60, True, 8e-4),
    "ft_NTU120_xsub_small": ("ntu120_hrnet", "xsub", 120, True, 8e-4),
    "ft_NTU120_xview_small": ("ntu120_hrnet", "xset", 120, True, 8e-4),
}


@pytest.mark.parametrize("hyper", [1, 2])
@pytest.mark.parametrize("config", list(SEED_CONFIGS))
def test_every_seed_command_parses_to_the_published_settings(config, hyper, tmp_path):
    argv = (finetune_argv(config, tmp_path / "out", hyper) if config.startswith("ft_")
            else train_argv(config, tmp_path / "out", hyper))
    cfg = expected_config(argv)
    dataset, split, classes, finetune, lr_head = SEED_CONFIGS[config]
    assert cfg.name == config
    assert (cfg.data.dataset, cfg.data.data_split, cfg.data.action_classes) == (dataset, split, classes)
    assert (cfg.train.finetune, cfg.train.backbone_ckpt, cfg.train.partial_train) == (finetune, None, None)
    assert cfg.train.lr_head == pytest.approx(lr_head) and cfg.train.lr_backbone == pytest.approx(8e-5)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.ckpt_save_frequency) == (300, 8, 5)
    assert (cfg.model.version, cfg.model.hyper_relation_bias) == (2, "uniform")
    assert (cfg.model.dim_rep, cfg.model.depth, cfg.model.num_heads, cfg.model.maxlen) == (128, 6, 8, 243)
    assert cfg.data.clip_len == 243 and cfg.train.log == "run_action" and not cfg.train.quickdebug
    assert cfg.hyper.joint_label == yaml.safe_load((ROOT / HYPER[hyper]).read_text())["joint_label"]


@pytest.mark.parametrize("config", [c for c in SEED_CONFIGS if c not in
                                    ("train_NTU60_xsub_small", "train_NTU120_xview_small")])
def test_the_other_seed_configs_train_a_quickdebug_epoch(config, data, reference, tmp_path, monkeypatch):
    """The six configs not trained in full above: one quickdebug epoch each (finetuning from the reference
    run's checkpoint, given through the config key backbone_ckpt)."""
    out = tmp_path / config
    dataset, split, classes, finetune, _ = SEED_CONFIGS[config]
    overrides = (ntu120_sets(data) if classes == 120 else demo_sets(data)) + ["quickdebug=true", "epochs=1",
                                                                              "batch_size=4"]
    if finetune:
        overrides.append(f"backbone_ckpt={reference['dir'] / 'latest_epoch.bin'}")
        argv = finetune_argv(config, out, hyper=2, overrides=overrides)
    else:
        argv = train_argv(config, out, hyper=2, overrides=overrides)
    assert run_in_process(train_action.main, argv, monkeypatch) == 0
    saved = load_yaml_config(out / "config.yaml")
    assert (saved.data.data_split, saved.data.action_classes, saved.train.finetune) == (split, classes, finetune)
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    state = load(out / "latest_epoch.bin")
    assert state["epoch"] == 1 and state["model"]["head.fc2.weight"].shape[0] == classes
    if finetune:
        num_backbone = sum(k.startswith("backbone.") for k in load(reference["dir"] / "latest_epoch.bin")["model"])
        assert (f"{num_backbone} loaded, 0 missing, 0 unexpected, 0 with another shape"
                in (out / "run_action.log").read_text())


def test_quickdebug_runs_one_training_and_one_validation_batch_per_epoch(data, tmp_path, monkeypatch):
    forwards = []  # (training mode, batch size) of every forward pass of the model

    def counting_action_model(cfg):
        model = action_model(cfg)
        model.register_forward_hook(lambda module, args, output: forwards.append((module.training, len(args[0]))))
        return model

    monkeypatch.setattr(engine_classification, "action_model", counting_action_model)
    out = tmp_path / "quick"
    argv = train_argv("train_NTU60_xsub_small", out,
                      overrides=demo_sets(data) + ["quickdebug=true", "epochs=2", "batch_size=4"])
    assert run_in_process(train_action.main, argv, monkeypatch) == 0
    assert forwards == [(True, 4), (False, 4), (True, 4), (False, 4)]
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    # top-1 over a single batch of 4 is a multiple of 25 %
    for r in read_metrics(out):
        assert r["train_top1"] % 25 == 0 and r["val_top1"] % 25 == 0
    assert load(out / "latest_epoch.bin")["optimizer"]["state"][0]["step"] == 2  # one step per epoch


def test_best_epoch_is_saved_even_when_validation_accuracy_stays_zero(data, tmp_path, monkeypatch):
    """A run whose validation top-1 is 0 in every epoch (common in quickdebug runs and early epochs) still
    has a best_epoch.bin to evaluate, as the README's evaluation command expects."""
    real_metrics = engine_classification.classification_metrics

    def zero_top1(logits, labels):
        return dict(real_metrics(logits, labels), top1=0.0)

    monkeypatch.setattr(engine_classification, "classification_metrics", zero_top1)
    out = tmp_path / "zero"
    argv = train_argv("train_NTU60_xsub_small", out,
                      overrides=demo_sets(data) + ["quickdebug=true", "epochs=2", "batch_size=4"])
    assert run_in_process(train_action.main, argv, monkeypatch) == 0
    assert (out / "latest_epoch.bin").is_file()
    assert (out / "best_epoch.bin").is_file(), "no best_epoch.bin when every validation top-1 is 0"
    assert load(out / "best_epoch.bin")["epoch"] in (1, 2)


# ---------------------------------------------------------------------------------------------------------
# 2. Evaluation


def numpy_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1/top-5 (%), mean per-class accuracy over the classes present (%), mean cross-entropy."""
    logits = logits.astype(np.float64)
    predicted = logits.argmax(axis=1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {
        "top1": 100.0 * np.mean(predicted == labels),
        "top5": 100.0 * np.mean([label in row for label, row in zip(labels, top5)]),
        "mean_class_accuracy": 100.0 * np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]),
        "loss": -np.mean(log_probs[np.arange(len(labels)), labels]),
        "samples": len(labels),
    }


@pytest.fixture(scope="module")
def evaluation(reference) -> dict:
    """The seed evaluation command on the reference run's best_epoch.bin, default output folder."""
    ckpt = reference["dir"] / "best_epoch.bin"
    argv = evaluate_argv("train_NTU60_xsub_small", ckpt, overrides=reference["overrides"])
    result = run_script("evaluate_action.py", argv)
    assert_ok(result)
    return {"dir": reference["dir"] / "best_epoch_eval", "argv": argv, "ckpt": ckpt}


def test_seed_evaluation_command_writes_consistent_artefacts(evaluation, reference, data):
    out = evaluation["dir"]
    for name in ("metrics.json", "per_class.csv", "confusion.png", "predictions.npz"):
        assert (out / name).is_file(), name

    predictions = np.load(out / "predictions.npz")
    logits, labels = predictions["logits"], predictions["label"]
    val_n = split_size(data / "demo_tiny.pkl", "xsub_val")
    assert logits.shape == (val_n, 60) and labels.shape == (val_n,)
    with open(data / "demo_tiny.pkl", "rb") as f:
        dataset = pickle.load(f)
    assert list(predictions["frame_dir"]) == dataset["split"]["xsub_val"]
    truth = {a["frame_dir"]: a["label"] for a in dataset["annotations"]}
    assert list(labels) == [truth[name] for name in dataset["split"]["xsub_val"]]

    metrics = json.loads((out / "metrics.json").read_text())
    ours = numpy_metrics(logits, labels)
    assert metrics["samples"] == ours["samples"] == val_n
    assert metrics["top1"] == pytest.approx(ours["top1"], abs=1e-9)
    assert metrics["top5"] == pytest.approx(ours["top5"], abs=1e-9)
    assert metrics["mean_class_accuracy"] == pytest.approx(ours["mean_class_accuracy"], abs=1e-4)
    assert metrics["loss"] == pytest.approx(ours["loss"], rel=1e-5)
    assert metrics["protocol"]["num_clips"] == 1

    # the checkpoint's validation during training saw the same clips: the same numbers
    best = load(evaluation["ckpt"])
    record = read_metrics(reference["dir"])[best["epoch"] - 1]
    assert metrics["top1"] == pytest.approx(record["val_top1"], abs=1e-9)
    assert metrics["top5"] == pytest.approx(record["val_top5"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(record["val_loss"], rel=1e-5)

    # per_class.csv: every NTU60 class by name, with the counts of the predictions
    names = [line.strip().rstrip(".") for line in (ROOT / "configs/action/ntu60_classes.txt").read_text()
             .splitlines() if line.strip()]
    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == list(range(60))
    assert [r["class"] for r in rows] == names
    predicted = logits.argmax(axis=1)
    for c, row in enumerate(rows):
        assert int(row["samples"]) == int(np.sum(labels == c))
        assert int(row["correct"]) == int(np.sum((labels == c) & (predicted == c)))
        if int(row["samples"]):
            assert float(row["accuracy"]) == pytest.approx(100 * int(row["correct"]) / int(row["samples"]), abs=0.01)
        else:
            assert row["accuracy"] == ""

    # confusion.png: a real, sizeable image
    png = (out / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    import matplotlib.image

    height, width = matplotlib.image.imread(out / "confusion.png").shape[:2]
    assert height >= 500 and width >= 500


def test_evaluation_is_deterministic_and_honours_out_dir(evaluation, tmp_path):
    out = tmp_path / "elsewhere"
    result = run_script("evaluate_action.py", evaluation["argv"] + ["--out-dir", out])
    assert_ok(result)
    for name in ("metrics.json", "per_class.csv", "confusion.png", "predictions.npz"):
        assert (out / name).is_file(), name
    first, second = np.load(evaluation["dir"] / "predictions.npz"), np.load(out / "predictions.npz")
    assert np.array_equal(first["logits"], second["logits"])
    assert np.array_equal(first["label"], second["label"])
    strip = lambda m: {k: v for k, v in m.items() if k != "checkpoint"}  # noqa: E731
    assert (strip(json.loads((evaluation["dir"] / "metrics.json").read_text()))
            == strip(json.loads((out / "metrics.json").read_text())))


# ---------------------------------------------------------------------------------------------------------
# 3. Exact resume


def test_resume_at_an_epoch_boundary_ends_bit_identical(reference, tmp_path):
    """1 epoch, then -r latest_epoch.bin with epochs=3 (the end epoch), equals 3 epochs in one go."""
    out = tmp_path / "resumed"
    first = run_script("train_action.py", train_argv("train_NTU60_xsub_small", out,
                                                      overrides=reference["overrides"] + ["epochs=1"]))
    assert_ok(first)
    assert load(out / "latest_epoch.bin")["epoch"] == 1
    second = run_script("train_action.py", train_argv("train_NTU60_xsub_small", out,
                                                       resume=out / "latest_epoch.bin",
                                                       overrides=reference["overrides"]))
    assert_ok(second)

    ours, theirs = load(out / "latest_epoch.bin"), load(reference["dir"] / "latest_epoch.bin")
    assert ours["epoch"] == theirs["epoch"] == 3
    assert_same_tensors(ours["model"], theirs["model"], "model after resume")
    assert_same_tensors(optimizer_tensors(ours), optimizer_tensors(theirs), "optimizer after resume")
    assert_same_tensors(load(out / "best_epoch.bin")["model"], load(reference["dir"] / "best_epoch.bin")["model"],
                        "best model after resume")
    assert without_time(read_metrics(out)) == without_time(read_metrics(reference["dir"]))
    log_text = (out / "run_action.log").read_text()
    assert "resumed from" in log_text
    for epoch in (1, 2, 3):
        assert len(epoch_lines(log_text, epoch)) == 1


# Runs the real entry train_action.py as `python train_action.py ARGS` does, with one change: the process
# sends itself SIGTERM when the training set reads its nth sample. With num_workers=0 the samples are read
# in this process, one batch at a time, so the signal arrives while the batch holding that sample is being
# read, however fast the machine is; signal.raise_signal runs the installed Python handler (the training
# loop's) before it returns, and the loop stops after that batch.
SIGTERM_LAUNCHER = """
import runpy, signal, sys
sys.path[0] = {root!r}  # as for `python train_action.py`: the project root first
from lib.data.dataset import ActionDataset

read_sample, reads = ActionDataset.__getitem__, 0


def read_and_signal(self, i):
    global reads
    if self.train:
        reads += 1
        if reads == {nth}:
            signal.raise_signal(signal.SIGTERM)
    return read_sample(self, i)


ActionDataset.__getitem__ = read_and_signal
sys.argv[0] = "train_action.py"
runpy.run_path("train_action.py", run_name="__main__")
"""
SIGTERM_BATCH = 7  # 1-based; the signal comes with the batch's last sample (batch_size 2)


def test_sigterm_mid_epoch_saves_and_resume_ends_bit_identical(reference, tmp_path):
    out = tmp_path / "interrupted"
    launcher = tmp_path / "train_with_sigterm.py"
    launcher.write_text(SIGTERM_LAUNCHER.format(root=str(ROOT), nth=2 * SIGTERM_BATCH))
    argv = train_argv("train_NTU60_xsub_small", out, overrides=reference["overrides"] + ["num_workers=0"])
    interrupted = subprocess.run([sys.executable, str(launcher), *map(str, argv)], cwd=ROOT, env=ENV,
                                 capture_output=True, text=True, timeout=TIMEOUT)
    assert interrupted.returncode == 128 + signal.SIGTERM, interrupted.stderr[-3000:]
    assert "Traceback" not in interrupted.stderr

    state = load(out / "latest_epoch.bin")
    batches_per_epoch = split_size(Path(reference["config"].data.pickle_path), "xsub_train") // 2
    progress = state["progress"]
    # saved after the batch during which the signal came: mid-epoch, at exactly that batch
    assert progress["epoch"] == 0 and progress["next_batch"] == SIGTERM_BATCH < batches_per_epoch, progress
    assert progress["sums"]["count"] == 2 * progress["next_batch"]
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {float(progress["next_batch"])}
    assert "stopped by signal 15" in (out / "run_action.log").read_text()
    last_bar = interrupted.stderr.split("\r")[-1]  # the progress bar's last state counts the same batches
    assert f"| {SIGTERM_BATCH}/{batches_per_epoch} [" in last_bar, last_bar
    if (out / "metrics.jsonl").exists():
        assert read_metrics(out) == [], "no epoch was completed"

    resumed = run_script("train_action.py", train_argv("train_NTU60_xsub_small", out,
                                                        resume=out / "latest_epoch.bin",
                                                        overrides=reference["overrides"]))
    assert_ok(resumed)
    ours, theirs = load(out / "latest_epoch.bin"), load(reference["dir"] / "latest_epoch.bin")
    assert_same_tensors(ours["model"], theirs["model"], "model after a mid-epoch resume")
    assert_same_tensors(optimizer_tensors(ours), optimizer_tensors(theirs), "optimizer after a mid-epoch resume")
    assert without_time(read_metrics(out)) == without_time(read_metrics(reference["dir"]))


# ---------------------------------------------------------------------------------------------------------
# 4. Finetuning


def backbone_only(model_state: dict) -> dict:
    return {k[len("backbone."):]: v for k, v in model_state.items() if k.startswith("backbone.")}


def test_finetune_from_our_action_checkpoint_with_partial_train(reference, data, tmp_path):
    source = reference["dir"] / "best_epoch.bin"
    out = tmp_path / "ft_NTU60_xsub"
    argv = finetune_argv("ft_NTU60_xsub_small", out, extra=["--backbone_ckpt", source],
                         overrides=demo_sets(data) + ["epochs=1", "batch_size=8",
                                                      "partial_train=[temporal_blocks.0]"])
    result = run_script("train_action.py", argv)
    assert_ok(result)

    before = backbone_only(load(source)["model"])
    log_text = (out / "run_action.log").read_text()
    assert f"backbone from {source}: {len(before)} loaded, 0 missing, 0 unexpected, 0 with another shape" in log_text
    cfg = expected_config(argv)
    backbone_params = dict(action_model(cfg).backbone.named_parameters())
    trainable = [name for name in backbone_params if "temporal_blocks.0" in name]
    assert trainable and len(trainable) < len(backbone_params)
    assert f"partial_train: {len(trainable)} backbone tensors trainable" in log_text

    state = load(out / "latest_epoch.bin")
    after = backbone_only(state["model"])
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == sorted(trainable), "exactly the partial_train tensors move; the loaded rest stays put"
    groups = state["optimizer"]["param_groups"]
    assert len(groups[0]["params"]) == len(trainable)
    assert len(groups[1]["params"]) == sum(1 for _ in action_model(cfg).head.parameters())


def test_finetune_from_a_partial_backbone_state_dict_reports_the_counts(reference, data, tmp_path, monkeypatch):
    source = backbone_only(load(reference["dir"] / "best_epoch.bin")["model"])
    partial = dict(source)
    del partial["spatial_norm.weight"], partial["spatial_norm.bias"]  # 2 missing
    partial["joint_embed.bias"] = torch.zeros(5)  # 1 with another shape (the model has 16)
    partial["extra.weight"] = torch.ones(3)  # 1 unexpected
    path = tmp_path / "backbone_partial.pth"
    torch.save(partial, path)

    out = tmp_path / "ft"
    argv = finetune_argv("ft_NTU60_xsub_small", out,
                         overrides=demo_sets(data) + [f"backbone_ckpt={path}", "quickdebug=true", "epochs=1",
                                                      "batch_size=4", "partial_train=[temporal_blocks.0]"])
    assert run_in_process(train_action.main, argv, monkeypatch) == 0
    log_text = (out / "run_action.log").read_text()
    counts = re.search(r"backbone from .*: (\d+) loaded, (\d+) missing.*, (\d+) unexpected.*, (\d+) with another shape",
                       log_text)
    assert counts, log_text
    assert tuple(map(int, counts.groups())) == (len(source) - 3, 2, 1, 1)
    assert "spatial_norm.weight" in log_text and "extra.weight" in log_text and "joint_embed.bias" in log_text

    after = backbone_only(load(out / "latest_epoch.bin")["model"])
    frozen_loaded = [k for k in source if "temporal_blocks.0" not in k
                     and k not in ("spatial_norm.weight", "spatial_norm.bias", "joint_embed.bias")]
    assert all(torch.equal(after[k], source[k]) for k in frozen_loaded), "loaded, frozen tensors keep their values"
    # not loaded: the fresh initialisation, not the trained values
    assert torch.equal(after["spatial_norm.weight"], torch.ones(16))
    assert not torch.equal(after["spatial_norm.weight"], source["spatial_norm.weight"])
    assert not torch.equal(after["joint_embed.bias"], source["joint_embed.bias"])


def test_finetune_from_a_foreign_checkpoint_is_a_one_line_error(data, tmp_path):
    path = tmp_path / "linear.pth"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    argv = finetune_argv("ft_NTU60_xsub_small", tmp_path / "ft", extra=["--backbone_ckpt", path],
                         overrides=demo_sets(data) + ["epochs=1"])
    result = run_script("train_action.py", argv)
    assert_one_line_error(result.returncode, result.stderr, f"nothing in {path} matches the backbone")
    assert not (tmp_path / "ft" / "latest_epoch.bin").exists()


def test_finetune_without_a_backbone_checkpoint_is_a_one_line_error(data, tmp_path, monkeypatch, capsys):
    argv = finetune_argv("ft_NTU60_xsub_small", tmp_path / "ft", overrides=demo_sets(data) + ["epochs=1"])
    code = run_in_process(train_action.main, argv, monkeypatch)
    assert_one_line_error(code, capsys.readouterr().err, "finetuning needs a pretrained backbone", "backbone_ckpt")


# ---------------------------------------------------------------------------------------------------------
# 5. Bad input: one line on stderr starting with "error:", exit status 2, no traceback


def test_train_without_checkpoint_folder(tmp_path):
    argv = train_argv("train_NTU60_xsub_small", "unused")
    argv = argv[:2] + argv[4:]  # drop --checkpoint DIR
    result = run_script("train_action.py", argv)
    assert_one_line_error(result.returncode, result.stderr, "--checkpoint")


def test_evaluate_without_evaluate_flag():
    argv = evaluate_argv("train_NTU60_xsub_small", "unused")
    argv = argv[: argv.index("--evaluate")] + argv[argv.index("--evaluate") + 2:]
    result = run_script("evaluate_action.py", argv)
    assert_one_line_error(result.returncode, result.stderr, "--evaluate")


MODEL_OVERRIDES = ("dim_rep=", "depth=", "num_heads=", "maxlen=", "hidden_dim=", "clip_len=")


@pytest.mark.parametrize("model_sets", [[], ["dim_rep=32", "depth=3"]], ids=["no model overrides", "other ones"])
def test_evaluation_builds_the_model_the_checkpoint_was_trained_with(evaluation, reference, tmp_path, model_sets):
    # The run trained a tiny model on 8-frame clips through --set; evaluating it needs only the data settings: the
    # model settings saved in the checkpoint win over the config's (and over other --set values), the clip length
    # too where the config's is longer than the model takes, and the log says so.
    data_only = [s for s in reference["overrides"] if not s.startswith(MODEL_OVERRIDES)] + model_sets
    out = tmp_path / "eval"
    argv = evaluate_argv("train_NTU60_xsub_small", evaluation["ckpt"], overrides=data_only) + ["--out-dir", out]
    result = run_script("evaluate_action.py", argv)
    assert_ok(result)
    assert "using the checkpoint's: model.dim_rep=16 (config: " in result.stdout + result.stderr
    assert np.array_equal(np.load(out / "predictions.npz")["logits"],
                          np.load(evaluation["dir"] / "predictions.npz")["logits"])


def test_heatmaps_and_export_of_a_run_need_no_model_overrides(evaluation, reference, tmp_path):
    """The README's heatmap and export commands on the run's checkpoint with only the data settings: the model
    is the one the checkpoint was trained with (the export's parity check against PyTorch passes on it)."""
    data_only = [s for s in reference["overrides"] if not s.startswith(MODEL_OVERRIDES)]
    vis = run_script("vis_action_attn.py", evaluate_argv("train_NTU60_xsub_small", evaluation["ckpt"],
                                                         overrides=data_only, extra=["--attn-dir", tmp_path / "vis"]))
    assert_ok(vis)
    assert "using the checkpoint's: model.dim_rep=16 (config: " in vis.stdout + vis.stderr
    assert len(list((tmp_path / "vis").glob("*/sheet.png"))) == 1
    onnx_path = tmp_path / "model.onnx"
    export = run_script("deployment/deployment_action.py", evaluate_argv(
        "train_NTU60_xsub_small", evaluation["ckpt"], overrides=data_only, extra=["--deployment", onnx_path]))
    assert_ok(export)
    assert "using the checkpoint's: model.dim_rep=16 (config: " in export.stdout + export.stderr
    assert onnx_path.is_file()


def test_evaluate_a_missing_checkpoint(reference, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere" / "best_epoch.bin"
    code = run_in_process(evaluate_action.main,
                          evaluate_argv("train_NTU60_xsub_small", missing, overrides=reference["overrides"]),
                          monkeypatch)
    assert_one_line_error(code, capsys.readouterr().err, "not found", str(missing))
    assert not (tmp_path / "nowhere").exists()


def test_evaluate_a_run_folder_names_its_checkpoints(reference, monkeypatch, capsys):
    folder = reference["dir"]
    code = run_in_process(evaluate_action.main,
                          evaluate_argv("train_NTU60_xsub_small", folder, overrides=reference["overrides"]), monkeypatch)
    checkpoints = sorted(p.name for p in folder.glob("*.bin"))
    assert "best_epoch.bin" in checkpoints and "latest_epoch.bin" in checkpoints
    assert_one_line_error(code, capsys.readouterr().err, f"{folder} is a folder; give a checkpoint file in it: "
                          + ", ".join(checkpoints))


def test_resume_from_a_weights_only_file(reference, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights.bin"
    torch.save(load(reference["dir"] / "latest_epoch.bin")["model"], weights)
    argv = train_argv("train_NTU60_xsub_small", tmp_path / "run", resume=weights, overrides=reference["overrides"])
    code = run_in_process(train_action.main, argv, monkeypatch)
    assert_one_line_error(code, capsys.readouterr().err, str(weights), "weights only")


@pytest.mark.parametrize("change", ["dim_rep=32", "partial_train=[temporal_blocks.0]"])
def test_resume_from_a_checkpoint_that_does_not_fit_the_config(change, reference, tmp_path, monkeypatch, capsys):
    """DESIGN 7: a checkpoint from another architecture is a one-line error, also for -r; so is a training
    state whose optimizer groups do not fit (other trainable parameters)."""
    key = change.split("=")[0]
    overrides = [s for s in reference["overrides"] if not s.startswith(key + "=")] + [change]
    ckpt = reference["dir"] / "latest_epoch.bin"
    argv = train_argv("train_NTU60_xsub_small", tmp_path / "run", resume=ckpt, overrides=overrides)
    code = run_in_process(train_action.main, argv, monkeypatch)  # a traceback here fails the test too
    assert_one_line_error(code, capsys.readouterr().err, str(ckpt))


def test_resume_from_a_missing_checkpoint(reference, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "latest_epoch.bin"
    argv = train_argv("train_NTU60_xsub_small", tmp_path / "run", resume=missing, overrides=reference["overrides"])
    code = run_in_process(train_action.main, argv, monkeypatch)
    assert_one_line_error(code, capsys.readouterr().err, "not found", str(missing))
