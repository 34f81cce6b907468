"""The speed settings a researcher relies on to change nothing but speed: every attention implementation
computes the same numbers, a compiled model gives the eager model's results (training, validation and
evaluation, compiled once, on the CPU's inductor), a model that cannot compile still runs, q/k/v are split
into heads with one copy, and the loader's automatic worker count. (The CUDA-only branches, CUDA graphs
and the cuDNN / memory-efficient kernels, run in benchmarks/bench_gpu.py on a GPU.)"""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_action
import train_action
from benchmarks.op_count import OperatorCounter
from lib.cli import run_main
from lib.config import Config, apply_override
from lib.data import synthetic
from lib.data.pyskl import load_store
from lib.engine import compiled as engine_compiled
from lib.engine.build import action_model
from lib.engine.compiled import CompiledOrEager, compile_enabled, pad_batch
from lib.engine.runtime import GPU_CLIPS_PER_SECOND, WORKER_CLIPS_PER_SECOND, loader_workers
from lib.errors import UserError
from lib.model.attention import SelfAttention, resolve_attention

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 16


def small_model(attention: str, seed: int = 0):
    cfg = Config()
    cfg.model.dim_rep, cfg.model.depth, cfg.model.num_heads, cfg.model.hidden_dim = 32, 2, 4, 64
    cfg.model.maxlen = cfg.data.clip_len = FRAMES
    cfg.model.attention = attention
    torch.manual_seed(seed)
    model = action_model(cfg)
    with torch.no_grad():  # move the zero-initialised tensors (hyperedge bias, positions) so every path matters
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def outputs_and_gradients(model, x):
    x = x.clone().requires_grad_()
    logits = model(x)
    logits.square().sum().backward()
    bias = model.backbone.spatial_blocks[0].joint_block.attn.joint_bias
    return logits.detach(), x.grad, bias.grad


@pytest.mark.parametrize("attention", ["sdpa", "sdpa_math", "auto"])
def test_every_attention_implementation_gives_the_explicit_numbers_and_gradients(attention):
    x = torch.randn(3, 2, FRAMES, 17, 3, generator=torch.Generator().manual_seed(1))
    expected = outputs_and_gradients(small_model("explicit"), x)
    got = outputs_and_gradients(small_model(attention), x)
    for name, a, b in zip(("logits", "input gradient", "joint bias gradient"), got, expected):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (attention, name, float((a - b).abs().max()))
    assert expected[2].abs().max() > 0  # the learnable skeleton bias is in the graph


def test_flex_attention_gives_the_explicit_numbers_in_inference():
    """FlexAttention (bias as a score modification) has no backward on the CPU: inference only here."""
    x = torch.randn(2, 2, FRAMES, 17, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = small_model("explicit")(x), small_model("flex")(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), float((got - expected).abs().max())


def test_auto_attention_is_explicit_over_the_joints_and_sdpa_over_the_frames():
    assert resolve_attention("auto", 17) == "explicit" and resolve_attention("auto", 243) == "sdpa"
    assert resolve_attention("sdpa_efficient", 17) == "sdpa_efficient"  # a named choice is kept


def test_attention_and_compile_settings_are_validated():
    cfg = Config()
    assert cfg.model.attention == "auto" and cfg.train.compile == "auto"
    for good, key in (("attention=flex", "attention"), ("compile=true", "compile"), ("compile=auto", "compile")):
        apply_override(cfg, good)
    assert cfg.model.attention == "flex" and cfg.train.compile == "auto"
    with pytest.raises(UserError, match="'model.attention' must be one of .*'explicit'"):
        apply_override(cfg, "attention=fast")
    with pytest.raises(UserError, match="'train.compile' must be one of 'auto', True, False"):
        apply_override(cfg, "compile=yes please")
    assert compile_enabled("auto", torch.device("cuda")) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled(True, torch.device("cpu")) and not compile_enabled(False, torch.device("cuda"))


def test_self_attention_splits_q_k_v_into_heads_with_one_copy():
    """The fused q|k|v projection is rearranged into heads by one copy; the only other is merging the heads."""
    attention = SelfAttention(32, 4, attention="explicit")
    with torch.no_grad(), OperatorCounter() as counter:
        attention(torch.randn(6, 17, 32))
    copies = {name: n for name, n in counter.counts.items() if name in ("clone", "contiguous", "copy_", "_to_copy")}
    assert sum(copies.values()) == 2, counter.counts
    assert counter.counts["addmm"] == 2 and counter.counts["bmm"] == 2  # q|k|v and output projections; two products


def test_a_model_that_fails_to_compile_runs_eager_after_one_warning(monkeypatch, caplog):
    """A compiler back-end that fails (as a missing C++ compiler or Triton would) inside the real torch.compile."""
    calls = []

    def broken_backend(graph, example_inputs):
        calls.append(1)
        raise RuntimeError("no working C++ compiler")

    real_compile = torch.compile
    monkeypatch.setattr(engine_compiled.torch, "compile",
                        lambda module, mode=None: real_compile(module, backend=broken_backend))
    model = small_model("auto")
    forward = CompiledOrEager(model)
    x = torch.randn(2, 2, FRAMES, 17, 3)
    with caplog.at_level(logging.WARNING, logger="lib"), torch.no_grad():
        first, second = forward(x), forward(x)
        expected = model(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(calls) == 1  # not retried
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torch.compile failed" in warnings[0] and "running eager" in warnings[0]
    assert forward.eval() is forward and not model.training and forward.train().module.training


def test_pad_batch_appends_zero_clips_only_when_short():
    x = torch.randn(3, 2, 4, 17, 3)
    padded = pad_batch(x, 5)
    assert padded.shape == (5, 2, 4, 17, 3) and torch.equal(padded[:3], x) and not padded[3:].any()
    assert pad_batch(x, 3) is x and pad_batch(x, 2) is x


def test_loader_workers_feed_the_gpu_twice_over_within_the_cores(monkeypatch):
    cfg = Config()
    assert cfg.data.num_workers is None
    assert loader_workers(cfg, torch.device("cpu")) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    workers = loader_workers(cfg, torch.device("cuda"))
    assert workers * WORKER_CLIPS_PER_SECOND >= 2 * GPU_CLIPS_PER_SECOND and 2 <= workers <= 15
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert loader_workers(cfg, torch.device("cuda")) == 1  # one core for the training process
    cfg.data.num_workers = 6
    assert loader_workers(cfg, torch.device("cuda")) == 6 and loader_workers(cfg, torch.device("cpu")) == 6


# ---------------------------------------------------------------------------------------------------------
# Compiled training and evaluation, end to end (the CPU's inductor; the slowest test here)

TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=8", "maxlen=8", "hidden_dim=32", "num_workers=0",
        "device=cpu", "batch_size=4", "epochs=2", "lr_backbone=0.002", "lr_head=0.002"]


def command(config_args, overrides):
    """A seed command (train_action.py or evaluate_action.py) with `config_args` and --set overrides."""
    argv = ["--config", "configs/action/train_NTU60_xsub_small.yaml", *config_args,
            "--hyper_cfg", "hyper_config/method2/manual_joint_label1.yaml"]
    for assignment in overrides:
        argv += ["--set", assignment]
    return argv


def test_compiled_training_compiles_once_and_evaluates_like_eager(tmp_path, monkeypatch):
    """Two epochs with compile=true: the graph count after epoch 2 equals that after epoch 1 (static shapes:
    nothing recompiles per epoch), and the validation split, whose size is not a multiple of the batch
    (the last batch is padded), gives the same predictions compiled as eager."""
    monkeypatch.chdir(ROOT)
    data = tmp_path / "data"
    data.mkdir()
    synthetic.write_pickle(synthetic.generate("demo", seed=0, num_samples=60), data / "demo_small.pkl")
    load_store(data / "demo_small.pkl")
    sets = [f"data_root={data}", "dataset=demo_small", *TINY]
    out = tmp_path / "run"
    assert run_main(train_action.main, command(["--checkpoint", str(out)], sets + ["compile=true"])) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["compiled_graphs"] >= 1
    assert records[1]["compiled_graphs"] == records[0]["compiled_graphs"], records
    assert "graphs compiled so far" in (out / "run_action.log").read_text()

    val_size = len(load_store(data / "demo_small.pkl").split_indices("xsub_val"))
    assert val_size % 4, "the validation split must end with a short batch"
    predictions = {}
    for setting in ("true", "false"):
        folder = tmp_path / f"eval_{setting}"
        argv = command(["--evaluate", str(out / "best_epoch.bin"), "--out-dir", str(folder)],
                       sets + [f"compile={setting}"])
        assert run_main(evaluate_action.main, argv) == 0
        predictions[setting] = dict(np.load(folder / "predictions.npz"))
    compiled, eager = predictions["true"], predictions["false"]
    assert compiled["logits"].shape == eager["logits"].shape and len(compiled["logits"]) == val_size
    assert np.abs(compiled["logits"] - eager["logits"]).max() < 1e-4
    assert (compiled["label"] == eager["label"]).all() and (compiled["frame_dir"] == eager["frame_dir"]).all()
