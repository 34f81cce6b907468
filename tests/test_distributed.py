"""Distributed training with a real two-process torchrun (gloo on the CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
SEED_ARGS = ["--config", "configs/action/train_NTU60_xsub_small.yaml", "--hyper_cfg",
             "hyper_config/method2/manual_joint_label1.yaml", "--hyper_relation_bias", "uniform", "--version", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    synthetic.write_pickle(synthetic.generate("demo", seed=0, num_samples=90), folder / "tiny.pkl")
    overrides = [f"data_root={folder}", "dataset=tiny", "dim_rep=16", "depth=1", "num_heads=2", "clip_len=8",
                 "maxlen=8", "hidden_dim=32", "num_workers=0", "device=cpu", "batch_size=4", "lr_head=0.003",
                 "lr_backbone=0.003", "ckpt_save_frequency=1"]
    return folder, [arg for o in overrides for arg in ("--set", o)]


def run(command, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, **kwargs)


def torchrun(*args, script="train_action.py", config_args=SEED_ARGS):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                script, *config_args, *map(str, args)])


def test_two_process_training_writes_one_run_whose_validation_equals_a_single_process_evaluation(tiny):
    folder, overrides = tiny
    out = folder / "run"
    result = torchrun("--checkpoint", out, *overrides, "--set", "epochs=2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "x 2 processes" in result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["best_epoch.bin", "config.yaml", "epoch_1.bin", "epoch_2.bin",
                                                     "latest_epoch.bin", "metrics.jsonl", "run_action.log",
                                                     "tensorboard"]
    log = (out / "run_action.log").read_text()
    assert log.count("epoch 1: train loss") == 1 and log.count("epoch 2: train loss") == 1  # rank 0 only
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    state = torch.load(out / "latest_epoch.bin", weights_only=True)
    assert len(state["rng"]["by_rank"]) == 2
    assert not torch.equal(state["rng"]["by_rank"][0]["torch"], state["rng"]["by_rank"][1]["torch"])
    # Batches of 4 per process, the epoch's batches shared out evenly: each process steps
    # (training clips // 4 // 2) times an epoch.
    train_clips = len(synthetic.generate("demo", seed=0, num_samples=90)["split"]["xsub_train"])
    assert state["optimizer"]["state"][0]["step"].item() == 2 * (train_clips // 4 // 2)

    evaluation = run([sys.executable, "evaluate_action.py", *SEED_ARGS, *overrides, "--evaluate",
                      str(out / "latest_epoch.bin"), "--out-dir", str(folder / "eval")])
    assert evaluation.returncode == 0, evaluation.stderr
    single = json.loads((folder / "eval" / "metrics.json").read_text())
    assert single["samples"] == len(synthetic.generate("demo", seed=0, num_samples=90)["split"]["xsub_val"])
    assert records[-1]["val_top1"] == pytest.approx(single["top1"], abs=1e-9)
    assert records[-1]["val_top5"] == pytest.approx(single["top5"], abs=1e-9)
    assert records[-1]["val_loss"] == pytest.approx(single["loss"], rel=1e-5)

    resumed = torchrun("--checkpoint", out, *overrides, "--set", "epochs=3", "-r", out / "latest_epoch.bin")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert torch.load(out / "latest_epoch.bin", weights_only=True)["optimizer"]["state"][0]["step"].item() == \
        3 * (train_clips // 4 // 2)


def test_two_process_training_on_checkpointed_micro_batches_matches_whole_batches(tiny):
    """DDP with the backbone on micro-batches: every parameter gets its gradient once per step (the
    checkpointed chunks recompute inside the same graph), and the epoch's training loss is the one of the
    run without micro-batches (no dropout, so both follow the same path up to rounding). The weights are
    not compared: Adam turns the rounding noise of gradients that are zero in exact arithmetic (the bias
    before the head's BatchNorm) into full-size steps."""
    folder, overrides = tiny
    exact = ["--set", "drop_path_rate=0", "--set", "dropout_ratio=0", "--set", "epochs=1"]
    losses = {}
    for micro_batch in (1, 4):
        out = folder / f"micro{micro_batch}"
        result = torchrun("--checkpoint", out, *overrides, *exact, "--set", f"micro_batch={micro_batch}")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert ("backbone on 1 clips at a time" in result.stdout + result.stderr) == (micro_batch == 1)
        losses[micro_batch] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert losses[1] == pytest.approx(losses[4], rel=1e-4)


def test_two_process_pretraining_writes_one_run_and_its_backbone_bin(tiny):
    """pretrain_action.py under torchrun: each process masks and reads its share of the batches, rank 0
    alone writes the logs, the checkpoints and backbone.bin, and every process's random state is saved."""
    folder, overrides = tiny
    out = folder / "pretrain"
    config_args = ["--config", "configs/pretrain/pretrain_demo.yaml"] + SEED_ARGS[2:]
    result = torchrun("--checkpoint", out, *overrides, "--set", "epochs=2", "--set", "segment=4", "--set",
                      "decoder_dim=16", "--set", "decoder_heads=2", "--set", "decoder_depth=1",
                      script="pretrain_action.py", config_args=config_args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "x 2 processes" in result.stdout + result.stderr
    assert {"backbone.bin", "latest_epoch.bin", "metrics.jsonl", "run_pretrain.log", "reconstruction.png"} <= {
        p.name for p in out.iterdir()}
    log = (out / "run_pretrain.log").read_text()
    assert log.count("epoch 2: train loss") == 1  # rank 0 only
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    state = torch.load(out / "latest_epoch.bin", weights_only=True)
    assert len(state["rng"]["by_rank"]) == 2
    train_clips = len(synthetic.generate("demo", seed=0, num_samples=90)["split"]["xsub_train"])
    assert state["optimizer"]["state"][0]["step"].item() == 2 * (train_clips // 4 // 2)
    backbone = torch.load(out / "backbone.bin", weights_only=True)["backbone"]
    for key, value in backbone.items():
        assert torch.equal(value, state["model"][f"backbone.{key}"]), key


def test_two_process_embedding_training_shares_class_balanced_batches_and_validates_as_one_process(tiny):
    """An embedding model under torchrun: each process trains on its share of the per-class batches, and
    the one-shot validation gathered from both equals a single-process evaluation of the same checkpoint."""
    from lib.engine.embedding import class_balanced_batches

    folder, overrides = tiny
    out = folder / "embed"
    embed = ["--set", "model_version=embed", "--set", "embed_dim=8", "--set", "clips_per_class=2"]
    result = torchrun("--checkpoint", out, *overrides, *embed, "--set", "epochs=2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "val_top1" in records[-1]
    data = synthetic.generate("demo", seed=0, num_samples=90)
    train = set(data["split"]["xsub_train"])
    labels = [a["label"] for a in data["annotations"] if a["frame_dir"] in train]
    steps = sum(len(class_balanced_batches(np.array(labels), 4, 2, 0, epoch)) // 2 for epoch in (0, 1))
    state = torch.load(out / "latest_epoch.bin", weights_only=True)
    assert state["optimizer"]["state"][0]["step"].item() == steps

    evaluation = run([sys.executable, "evaluate_action.py", *SEED_ARGS, *overrides, *embed, "--evaluate",
                      str(out / "latest_epoch.bin"), "--out-dir", str(folder / "embed_eval")])
    assert evaluation.returncode == 0, evaluation.stderr
    single = json.loads((folder / "embed_eval" / "metrics.json").read_text())
    assert records[-1]["val_top1"] == pytest.approx(single["top1"], abs=1e-9)
