"""Tests of lib/engine/convert_reference.py and lib/engine/published_names.py: published (EHGFormer / MixSTE2) checkpoints -> our names.

The published state dicts are synthesised here from the key list and shapes of REFERENCE.md 4.10, and the
inverse mapping (ours -> published) is written here independently of the converter's RENAMES.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.config import Config, apply_mapping
from lib.errors import UserError
from lib.engine.build import action_model
from lib.engine.checkpoint import read_state_dict
from lib.engine.convert_reference import unplaced_keys
from lib.engine.published_names import convert_state_dict, infer_model_config

ROOT = Path(__file__).resolve().parents[1]
V = 17
C, DEPTH, HEADS, FRAMES, CLASSES, HIDDEN = 32, 2, 4, 16, 60, 48
LABEL1 = [0, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3, 4, 4, 4, 5, 5, 5]
EDGES = 6




def linear_shapes(prefix, out_dim, in_dim, bias=True):
    shapes = {f"{prefix}.weight": (out_dim, in_dim)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_dim,)
    return shapes


def norm_shapes(prefix):
    return {f"{prefix}.weight": (C,), f"{prefix}.bias": (C,)}


def published_backbone_shapes():
    """Float tensors of a published MixSTE2 backbone (REFERENCE 4.1, 4.3-4.6, 4.10), backbone-relative."""
    s = {}
    s.update(linear_shapes("Spatial_patch_to_embedding", C, 3))
    s["Spatial_pos_embed"] = (1, V, C)
    s["Temporal_pos_embed"] = (1, FRAMES, C)
    for i in range(DEPTH):
        common = f"STEblocks.{i}.common_attn_blk"
        s.update(norm_shapes(f"{common}.norm1"))
        s.update(norm_shapes(f"{common}.norm2"))
        s.update(linear_shapes(f"{common}.attn.qkv", 3 * C, C))
        s.update(linear_shapes(f"{common}.attn.proj", C, C))
        s[f"{common}.attn.outer"] = (HEADS, V, V)
        s[f"{common}.attn.alpha"] = (1,)
        s.update(linear_shapes(f"{common}.mlp.fc1", 2 * C, C))
        s.update(linear_shapes(f"{common}.mlp.fc2", C, 2 * C))
        hyper = f"STEblocks.{i}.hyper_attn_blk"
        s.update(norm_shapes(f"{hyper}.norm1"))
        s.update(norm_shapes(f"{hyper}.norm2"))
        s.update(linear_shapes(f"{hyper}.mlp.fc1", 2 * C, C))
        s.update(linear_shapes(f"{hyper}.mlp.fc2", C, 2 * C))
        s[f"{hyper}.hyper_edge.pro_linears.0.weight"] = (C, C)
        s[f"{hyper}.attn.w1"] = (HEADS, C // HEADS)
        s.update(linear_shapes(f"{hyper}.attn.q", C, C))
        s.update(linear_shapes(f"{hyper}.attn.kv", 2 * C, C))
        s.update(linear_shapes(f"{hyper}.attn.proj", C, C))
        temporal = f"TTEblocks.{i}"
        s.update(norm_shapes(f"{temporal}.norm1"))
        s.update(norm_shapes(f"{temporal}.norm2"))
        s.update(linear_shapes(f"{temporal}.attn.qkv", 3 * C, C))
        s.update(linear_shapes(f"{temporal}.attn.proj", C, C))
        s.update(linear_shapes(f"{temporal}.mlp.fc1", 2 * C, C))
        s.update(linear_shapes(f"{temporal}.mlp.fc2", C, 2 * C))
    s.update(norm_shapes("Spatial_norm"))
    s.update(norm_shapes("Temporal_norm"))
    s.update(norm_shapes("head.0"))  # the pose-regression head: LayerNorm(C), Linear(C -> 3)
    s.update(linear_shapes("head.1", 3, C))
    return s


def derived_tensors(prefix=""):
    """The non-trainable hyper_edge tensors the published model stores (REFERENCE 4.4)."""
    label = torch.tensor(LABEL1, dtype=torch.long)
    out = {}
    for i in range(DEPTH):
        key = f"{prefix}STEblocks.{i}.hyper_attn_blk.hyper_edge"
        out[f"{key}.joint_label"] = label.clone()
        out[f"{key}.hyper_matrix"] = torch.nn.functional.one_hot(label, EDGES).float()
        out[f"{key}.merge_weight"] = torch.ones(1)
    return out


def action_head_tensors():
    return {
        "head.fc1.weight": torch.randn(HIDDEN, V * C), "head.fc1.bias": torch.randn(HIDDEN),
        "head.bn.weight": torch.randn(HIDDEN), "head.bn.bias": torch.randn(HIDDEN),
        "head.bn.running_mean": torch.randn(HIDDEN), "head.bn.running_var": torch.rand(HIDDEN) + 0.5,
        "head.bn.num_batches_tracked": torch.tensor(1234),
        "head.fc2.weight": torch.randn(CLASSES, HIDDEN), "head.fc2.bias": torch.randn(CLASSES),
    }


def published_action_state_dict(module_prefix=True):
    prefix = "module." if module_prefix else ""
    sd = {f"{prefix}backbone.{k}": 0.1 * torch.randn(shape) for k, shape in published_backbone_shapes().items()}
    sd.update({f"{prefix}backbone.{k}": v for k, v in derived_tensors().items()})
    sd.update({f"{prefix}{k}": v for k, v in action_head_tensors().items()})
    return sd


def model_from_settings(settings):
    cfg = Config()
    apply_mapping(cfg, {k: v for k, v in settings.items() if k != "joint_label"}, "test")
    if "joint_label" in settings:
        cfg.hyper.joint_label = settings["joint_label"]
    return action_model(cfg)


# ------------------------------------------------------------------------------------------------------


def test_convert_synthesised_published_dict():
    published = published_action_state_dict()
    converted, report = convert_state_dict(published)
    settings = infer_model_config(converted, report["joint_label"])
    assert settings["dim_rep"] == C and settings["depth"] == DEPTH and settings["num_heads"] == HEADS
    assert settings["maxlen"] == FRAMES and settings["version"] == 2 and settings["j2e_layout"] == "reference"
    assert settings["hidden_dim"] == HIDDEN and settings["action_classes"] == CLASSES
    assert report["joint_label"] == LABEL1
    assert settings["joint_label"] == [LABEL1]
    assert unplaced_keys(converted, settings) == []

    # derived tensors and the pose head are dropped, and reported
    derived = {f"backbone.{k}" for k in derived_tensors()}
    pose = {"backbone.head.0.weight", "backbone.head.0.bias", "backbone.head.1.weight", "backbone.head.1.bias"}
    assert set(report["dropped"]) == derived | pose
    assert not any("hyper_edge" in k or "joint_label" in k or "hyper_matrix" in k or "merge_weight" in k
                   for k in converted)
    assert len(converted) == len(published) - len(derived) - len(pose)

    model = model_from_settings(settings)
    model.load_state_dict(converted, strict=True)
    ours = model.state_dict()
    spot = {
        "module.backbone.Spatial_patch_to_embedding.weight": "backbone.joint_embed.weight",
        "module.backbone.Temporal_pos_embed": "backbone.temporal_pos",
        "module.backbone.Spatial_pos_embed": "backbone.spatial_pos",
        "module.backbone.STEblocks.1.common_attn_blk.attn.outer": "backbone.spatial_blocks.1.joint_block.attn.joint_bias",
        "module.backbone.STEblocks.0.common_attn_blk.attn.qkv.weight": "backbone.spatial_blocks.0.joint_block.attn.qkv.weight",
        "module.backbone.STEblocks.1.hyper_attn_blk.attn.kv.weight": "backbone.spatial_blocks.1.hyper_block.attn.kv.weight",
        "module.backbone.STEblocks.0.hyper_attn_blk.attn.w1": "backbone.spatial_blocks.0.hyper_block.attn.w1",
        "module.backbone.STEblocks.1.hyper_attn_blk.hyper_edge.pro_linears.0.weight":
            "backbone.spatial_blocks.1.hyper_block.edges.proj.weight",
        "module.backbone.STEblocks.0.hyper_attn_blk.mlp.fc2.bias": "backbone.spatial_blocks.0.hyper_block.mlp.fc2.bias",
        "module.backbone.TTEblocks.1.attn.proj.weight": "backbone.temporal_blocks.1.attn.proj.weight",
        "module.backbone.Temporal_norm.bias": "backbone.temporal_norm.bias",
        "module.head.bn.running_var": "head.bn.running_var",
        "module.head.fc2.weight": "head.fc2.weight",
    }
    for theirs, mine in spot.items():
        assert torch.equal(ours[mine], published[theirs]), mine
    alpha = published["module.backbone.STEblocks.0.common_attn_blk.attn.alpha"]
    assert ours["backbone.spatial_blocks.0.joint_block.attn.alpha"].shape == ()
    assert ours["backbone.spatial_blocks.0.joint_block.attn.alpha"].item() == alpha.item()
    assert ours["head.bn.num_batches_tracked"].item() == 1234


def test_unknown_key_wrong_shape_and_missing_key_are_reported():
    published = published_action_state_dict()
    published["module.backbone.STEblocks.0.common_attn_blk.attn.foo"] = torch.randn(3)
    published["module.backbone.TTEblocks.1.attn.proj.bias"] = torch.randn(C + 1)
    del published["module.backbone.Spatial_norm.weight"]
    converted, report = convert_state_dict(published)
    unplaced = unplaced_keys(converted, infer_model_config(converted, report["joint_label"]))
    assert sorted(unplaced) == sorted([
        "backbone.spatial_blocks.0.joint_block.attn.foo",
        "backbone.temporal_blocks.1.attn.proj.bias",
        "missing: backbone.spatial_norm.weight",
    ])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lib.engine.convert_reference", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_converts_a_published_file(tmp_path):
    src, dst = tmp_path / "published.bin", tmp_path / "out" / "converted.bin"
    published = published_action_state_dict()
    torch.save({"model": published, "epoch": 3, "best_acc": 88.0}, src)
    result = run_cli(src, dst)
    assert result.returncode == 0, result.stderr
    assert "not placed (0): none" in result.stdout
    out = torch.load(dst, weights_only=True)
    assert {"model", "model_config"} <= set(out)
    assert out["model_config"]["j2e_layout"] == "reference"
    model = model_from_settings(out["model_config"])
    model.load_state_dict(out["model"], strict=True)
    assert torch.equal(model.state_dict()["backbone.spatial_blocks.1.joint_block.attn.joint_bias"],
                       published["module.backbone.STEblocks.1.common_attn_blk.attn.outer"])
    # the converted file reads back as our own names, with no note
    state_dict, note = read_state_dict(dst)
    assert note == "" and set(state_dict) == set(out["model"])


def test_cli_reports_unplaced_keys(tmp_path):
    published = published_action_state_dict()
    published["module.backbone.STEblocks.0.common_attn_blk.attn.foo"] = torch.randn(3)
    published["module.backbone.TTEblocks.1.attn.proj.bias"] = torch.randn(C + 1)
    src = tmp_path / "published.bin"
    torch.save({"model": published}, src)
    result = run_cli(src, tmp_path / "converted.bin")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("not placed"))
    assert line.startswith("not placed (2):")
    assert "backbone.spatial_blocks.0.joint_block.attn.foo" in line
    assert "backbone.temporal_blocks.1.attn.proj.bias" in line


def test_cli_rejects_a_file_of_ours(tmp_path):
    model = action_model(small_config())
    src = tmp_path / "ours.bin"
    torch.save({"model": model.state_dict()}, src)
    result = run_cli(src, tmp_path / "converted.bin")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "converted.bin").exists()


# ------------------------------------------------------------------------------------------------------
# read_state_dict


def small_config(layout="standard"):
    cfg = Config()
    m = cfg.model
    m.dim_rep, m.depth, m.num_heads, m.maxlen, m.hidden_dim, m.j2e_layout = C, DEPTH, HEADS, FRAMES, HIDDEN, layout
    return cfg


def test_read_state_dict_accepts_ours_bare_and_published(tmp_path):
    sd = action_model(small_config()).state_dict()
    torch.save({"model": sd, "epoch": 1}, tmp_path / "ours.bin")
    torch.save(sd, tmp_path / "bare.bin")
    for name in ("ours.bin", "bare.bin"):
        loaded, note = read_state_dict(tmp_path / name)
        assert note == ""
        assert set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)

    published = published_action_state_dict()
    torch.save({"model": published, "epoch": 3, "best_acc": 88.0}, tmp_path / "published.bin")
    loaded, note = read_state_dict(tmp_path / "published.bin")
    assert note and "j2e_layout" in note and "reference" in note
    assert "backbone.spatial_blocks.0.hyper_block.attn.kv.weight" in loaded
    assert not any(k.startswith("module.") or "STEblocks" in k for k in loaded)
    model = model_from_settings(infer_model_config(loaded, LABEL1))
    model.load_state_dict(loaded, strict=True)


def test_read_state_dict_backbone_only_published(tmp_path):
    backbone = {k: 0.1 * torch.randn(shape) for k, shape in published_backbone_shapes().items()}
    backbone.update(derived_tensors())
    torch.save({"model_pos": {f"module.{k}": v for k, v in backbone.items()}, "epoch": 9}, tmp_path / "pose.bin")
    loaded, note = read_state_dict(tmp_path / "pose.bin")
    assert note
    model = action_model(small_config(layout="reference"))
    assert set(loaded) == set(model.backbone.state_dict())
    model.backbone.load_state_dict(loaded, strict=True)
    assert torch.equal(loaded["joint_embed.bias"], backbone["Spatial_patch_to_embedding.bias"])
    assert torch.equal(loaded["spatial_blocks.1.hyper_block.attn.q.weight"],
                       backbone["STEblocks.1.hyper_attn_blk.attn.q.weight"])
    settings = infer_model_config(loaded)
    assert (settings["dim_rep"], settings["depth"], settings["num_heads"], settings["maxlen"]) == (C, DEPTH, HEADS, FRAMES)
    assert unplaced_keys(loaded, settings) == []


def test_read_state_dict_errors(tmp_path):
    with pytest.raises(UserError) as err:
        read_state_dict(tmp_path / "nope.bin")
    assert "not found" in str(err.value) and "\n" not in str(err.value)

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError) as err:
        read_state_dict(garbage)
    assert str(garbage) in str(err.value) and "\n" not in str(err.value)

    torch.save({"epoch": 3, "best_acc": 88.0}, tmp_path / "no_weights.bin")
    with pytest.raises(UserError) as err:
        read_state_dict(tmp_path / "no_weights.bin")
    assert "no model weights" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------------
# End to end: our reference-layout model -> published names -> converter -> identical logits


def to_published_name(key):
    """Our name -> the published one (REFERENCE 4.10), written independently of the converter."""
    parts = key.split(".")
    if parts[0] == "head":
        return key
    assert parts[0] == "backbone"
    rest = parts[1:]
    simple = {"joint_embed": "Spatial_patch_to_embedding", "spatial_pos": "Spatial_pos_embed",
              "temporal_pos": "Temporal_pos_embed", "spatial_norm": "Spatial_norm", "temporal_norm": "Temporal_norm"}
    if rest[0] in simple:
        return ".".join(["backbone", simple[rest[0]]] + rest[1:])
    if rest[0] == "temporal_blocks":
        return ".".join(["backbone", "TTEblocks"] + rest[1:])
    assert rest[0] == "spatial_blocks"
    index, block, tail = rest[1], rest[2], rest[3:]
    if block == "joint_block":
        if tail == ["attn", "joint_bias"]:
            tail = ["attn", "outer"]
        return ".".join(["backbone", "STEblocks", index, "common_attn_blk"] + tail)
    assert block == "hyper_block"
    if tail[0] == "edges":
        assert tail == ["edges", "proj", "weight"]
        tail = ["hyper_edge", "pro_linears", "0", "weight"]
    return ".".join(["backbone", "STEblocks", index, "hyper_attn_blk"] + tail)


def test_round_trip_through_published_names_gives_identical_logits(tmp_path):
    cfg = small_config(layout="reference")
    cfg.hyper.joint_label = [LABEL1]
    model = action_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.2 * torch.randn_like(p))
        model.head.bn.running_mean.normal_()
        model.head.bn.running_var.uniform_(0.5, 1.5)
    model.eval()

    published = {}
    for key, value in model.state_dict().items():
        if key.endswith("attn.alpha"):
            value = value.reshape(1)  # published alpha is [1]
        published["module." + to_published_name(key)] = value.clone()
    published.update({f"module.backbone.{k}": v for k, v in derived_tensors().items()})
    published["module.backbone.head.0.weight"] = torch.ones(C)
    published["module.backbone.head.0.bias"] = torch.zeros(C)
    published["module.backbone.head.1.weight"] = torch.randn(3, C)
    published["module.backbone.head.1.bias"] = torch.randn(3)
    path = tmp_path / "published.bin"
    torch.save({"model": published, "epoch": 3, "best_acc": 88.0}, path)

    loaded, note = read_state_dict(path)
    assert note
    settings = infer_model_config(loaded, LABEL1)
    assert unplaced_keys(loaded, settings) == []
    fresh = model_from_settings(settings)
    fresh.load_state_dict(loaded, strict=True)
    fresh.eval()
    x = torch.randn(2, 2, 7, V, 3)
    with torch.no_grad():
        expected, actual = model(x), fresh(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert expected.std() > 0
