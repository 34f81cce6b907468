"""Tests of the model package: the skeleton graph (lib/skeleton.py), attention and stochastic depth
(lib/model/attention.py), the hypergraph (lib/model/hypergraph.py), the backbone and the action model.

Expected values come from first principles (REFERENCE.md sections 2, 4, 5) or from slow, independent
implementations written here with explicit per-head loops; nothing is pasted from running the code.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lib import skeleton
from lib.config import Config, load_yaml_config
from lib.data import synthetic
from lib.data.preprocess import make_clip
from lib.engine.build import action_model
from lib.model.attention import DropPath, JointToHyperedgeAttention, JointToJointAttention
from lib.model.hypergraph import HyperedgeFeatures, incidence_matrix

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs/action/demo_synthetic.yaml"
HYPER = {1: ROOT / "hyper_config/method2/manual_joint_label1.yaml",
         2: ROOT / "hyper_config/method2/manual_joint_label2.yaml"}
LABEL1 = (0, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3, 4, 4, 4, 5, 5, 5)
LABEL2 = (0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2)
V = 17




def small_config(classes=60, label=LABEL1, version=2, layout="standard", dim=16, heads=2, depth=1, maxlen=8,
                 hidden=32, **model):
    cfg = Config()
    m = cfg.model
    m.dim_rep, m.num_heads, m.depth, m.maxlen, m.hidden_dim = dim, heads, depth, maxlen, hidden
    m.version, m.j2e_layout = version, layout
    m.drop_path_rate, m.dropout_ratio = 0.0, 0.0
    for key, value in model.items():
        setattr(m, key, value)
    cfg.data.action_classes, cfg.data.clip_len = classes, maxlen
    cfg.hyper.joint_label = [list(label)]
    return cfg


def randomize_(module: nn.Module, scale=0.3):
    """Random, non-trivial weights everywhere (the default init gives nearly uniform attention and w1 = 0,
    which would let wrong formulas pass)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.7)
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
    return module


def linear(layer, x):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


# ------------------------------------------------------------------------------------------------------
# Skeleton


def test_adjacency_is_the_h36m_tree_without_the_spurious_edge():
    adj = skeleton.adjacency()
    assert adj.shape == (V, V)
    np.testing.assert_array_equal(adj, adj.T)
    np.testing.assert_array_equal(np.diag(adj), np.ones(V))
    off_diagonal = adj - np.eye(V)
    assert off_diagonal.sum() == 2 * 16  # 16 bones, each counted twice
    bones = {(1, 0), (2, 1), (3, 2), (4, 0), (5, 4), (6, 5), (7, 0), (8, 7), (9, 8), (10, 9), (11, 8),
             (12, 11), (13, 12), (14, 8), (15, 14), (16, 15)}  # REFERENCE 2.1
    for i in range(V):
        for j in range(V):
            if i != j:
                assert adj[i, j] == float((i, j) in bones or (j, i) in bones), (i, j)
    assert adj[0, 16] == 0 and adj[16, 0] == 0  # no pelvis - right wrist edge (DESIGN 3.5)
    assert len(skeleton.H36M_BONES) == 16


def test_normalized_adjacency_divides_columns_by_degree():
    norm = skeleton.normalized_adjacency()
    np.testing.assert_allclose(norm.sum(axis=0), np.ones(V), rtol=1e-6)
    # degrees by hand (self-loop included): pelvis = self + 1 + 4 + 7; thorax = self + 7 + 9 + 11 + 14;
    # right wrist = self + 15 (no spurious pelvis link); head = self + 9; right knee = self + 1 + 3
    assert norm[0, 0] == pytest.approx(1 / 4)
    assert norm[1, 0] == pytest.approx(1 / 4) and norm[7, 0] == pytest.approx(1 / 4)
    assert norm[0, 1] == pytest.approx(1 / 3)  # column 1 (right hip: self, 0, 2)
    assert norm[8, 8] == pytest.approx(1 / 5) and norm[14, 8] == pytest.approx(1 / 5)
    assert norm[16, 16] == pytest.approx(1 / 2) and norm[15, 16] == pytest.approx(1 / 2)
    assert norm[9, 10] == pytest.approx(1 / 2)
    assert norm[3, 2] == pytest.approx(1 / 3)
    assert norm[0, 16] == 0 and norm[16, 0] == 0 and norm[0, 2] == 0
    # every non-zero entry is 1 / degree of its column
    degree = skeleton.adjacency().sum(axis=0)
    np.testing.assert_allclose(norm, skeleton.adjacency() / degree[None, :], rtol=1e-6)


# ------------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("classes,dataset", [(60, "ntu60_hrnet"), (120, "ntu120_hrnet")])
@pytest.mark.parametrize("label_file,num_edges", [(1, 6), (2, 3)])
@pytest.mark.parametrize("version", [1, 2])
def test_logits_shape_for_every_configuration(classes, dataset, label_file, num_edges, version):
    maxlen = 8
    cfg = load_yaml_config(DEMO_CONFIG, HYPER[label_file], overrides=[
        "dim_rep=16", "num_heads=2", "depth=2", f"maxlen={maxlen}", f"clip_len={maxlen}", "hidden_dim=32",
        f"action_classes={classes}", f"dataset={dataset}", f"version={version}"])
    model = action_model(cfg).eval()
    blocks = model.backbone.spatial_blocks
    # the hypergraph comes from the config and is not part of the weights
    assert not any("joint_label" in k or "member_mean" in k for k in model.state_dict())
    if version == 2:
        assert blocks[0].hyper_block.edges.member_mean.shape == (num_edges, V)
    else:
        assert all(b.hyper_block is None for b in blocks)
    with torch.no_grad():
        for frames in (1, 5, maxlen):
            logits = model(torch.randn(2, 2, frames, V, 3))
            assert logits.shape == (2, classes)
            assert torch.isfinite(logits).all()
        with pytest.raises(ValueError):
            model(torch.randn(2, 2, maxlen + 1, V, 3))


def test_published_configs_train_with_the_published_in_block_dropout():
    """train_* configs: dropout p = each depth's drop-path rate (0 to 0.1) after the joint-to-joint attention's
    projection, inside its MLP and after the hypergraph attention's projection; none in the hypergraph MLP
    and the temporal blocks (REFERENCE 4.3, 4.6). block_dropout=false removes it."""
    cfg = load_yaml_config(ROOT / "configs/action/train_NTU60_xsub_small.yaml", HYPER[1])
    assert cfg.model.block_dropout and cfg.model.drop_path_rate == pytest.approx(0.1)
    rates = torch.linspace(0, 0.1, cfg.model.depth).tolist()

    def dropout_rates(module):
        return [m.p for m in module.modules() if isinstance(m, nn.Dropout)]

    backbone = action_model(cfg).backbone
    for depth, (spatial, temporal) in enumerate(zip(backbone.spatial_blocks, backbone.temporal_blocks)):
        p = pytest.approx(rates[depth])
        joint, hyper = spatial.joint_block, spatial.hyper_block
        assert joint.attn.proj_drop.p == p and joint.mlp.drop1.p == p and joint.mlp.drop2.p == p
        assert joint.drop_path.drop_prob == p
        assert hyper.attn.proj_drop.p == p and dropout_rates(hyper.mlp) == [0.0, 0.0]
        assert set(dropout_rates(temporal)) == {0.0}
    cfg.model.block_dropout = False
    assert set(dropout_rates(action_model(cfg).backbone)) == {0.0}


def test_in_block_dropout_acts_in_training_only():
    from lib.model.backbone import JointToJointBlock

    torch.manual_seed(0)
    block = JointToJointBlock(16, 2, 2.0, torch.eye(V), True, drop_path=0.0, drop=0.5)
    x = torch.randn(64, V, 16)
    hidden = block.mlp.act(block.mlp.fc1(x))
    block.train()
    zeros = (block.mlp.drop1(hidden) == 0).float().mean()
    assert 0.45 < float(zeros) < 0.55
    assert not torch.equal(block(x)[0], block(x)[0])  # a fresh mask each pass
    block.eval()
    torch.testing.assert_close(block(x)[0], block(x)[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------
# Attention: SDPA vs explicit softmax vs independent plain implementations


def plain_j2j(attn: JointToJointAttention, x):
    """softmax((q k^T + alpha G) d^-0.5) v per head, written out (REFERENCE 4.3)."""
    c = x.shape[-1]
    h = attn.num_heads
    d = c // h
    qkv = linear(attn.qkv, x)
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
    outs, probs = [], []
    for eta in range(h):
        cols = slice(eta * d, (eta + 1) * d)
        scores = q[..., cols] @ k[..., cols].transpose(-1, -2)
        if attn.use_bias:
            scores = scores + attn.alpha * attn.joint_bias[eta]  # bias BEFORE scaling
        a = torch.softmax(scores * d ** -0.5, dim=-1)
        outs.append(a @ v[..., cols])
        probs.append(a)
    return linear(attn.proj, torch.cat(outs, dim=-1)), torch.stack(probs, dim=1)


def plain_j2e_standard(attn: JointToHyperedgeAttention, x, e):
    """Standard layout: scores ([main] q e^T + [bias] 1 (e w1)^T) d^-0.5, values v(x)."""
    c = x.shape[-1]
    h = attn.num_heads
    d = c // h
    q, v = linear(attn.q, x), linear(attn.v, x)
    outs, probs = [], []
    for eta in range(h):
        cols = slice(eta * d, (eta + 1) * d)
        scores = torch.zeros(x.shape[0], x.shape[1], x.shape[1])
        if attn.use_main:
            scores = scores + q[..., cols] @ e[..., cols].transpose(-1, -2)
        if attn.use_bias:
            per_key = e[..., cols] @ attn.w1[eta]  # [B', V]
            scores = scores + per_key[:, None, :]  # identical for every query
        a = torch.softmax(scores * d ** -0.5, dim=-1)
        outs.append(a @ v[..., cols])
        probs.append(a)
    return linear(attn.proj, torch.cat(outs, dim=-1)), torch.stack(probs, dim=1)


@pytest.mark.parametrize("use_bias", [True, False])
def test_joint_to_joint_attention_matches_plain_formula(use_bias):
    attn = JointToJointAttention(24, 3, torch.as_tensor(skeleton.normalized_adjacency()), use_bias)
    randomize_(attn)
    x = torch.randn(5, V, 24)
    fused, none = attn(x)  # with gradients: scaled_dot_product_attention
    with torch.no_grad():
        inference, _ = attn(x)  # CPU inference over 17 joints: the explicit softmax
        explicit, probs = attn(x, return_probs=True)
        expected, expected_probs = plain_j2j(attn, x)
    assert none is None
    assert (fused - expected).abs().max() <= 1e-5
    assert (inference - expected).abs().max() <= 1e-5
    assert (explicit - expected).abs().max() <= 1e-5
    assert (probs - expected_probs).abs().max() <= 1e-5
    assert probs.shape == (5, 3, V, V)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 3, V))
    if use_bias:  # the bias must matter: without it the output is different
        attn.alpha.data.zero_()
        assert (attn(x)[0] - fused).abs().max() > 1e-3


@pytest.mark.parametrize("use_main,use_bias", [(True, True), (False, True), (True, False)])
def test_joint_to_hyperedge_attention_matches_plain_formula(use_main, use_bias):
    attn = randomize_(JointToHyperedgeAttention(24, 3, "standard", use_main, use_bias))
    x, e = torch.randn(5, V, 24), torch.randn(5, V, 24)
    fused, _ = attn(x, e)  # with gradients: scaled_dot_product_attention
    with torch.no_grad():
        inference, _ = attn(x, e)  # CPU inference over 17 joints: the explicit softmax
        explicit, probs = attn(x, e, return_probs=True)
        expected, expected_probs = plain_j2e_standard(attn, x, e)
    assert (fused - expected).abs().max() <= 1e-5
    assert (inference - expected).abs().max() <= 1e-5
    assert (explicit - expected).abs().max() <= 1e-5
    assert (probs - expected_probs).abs().max() <= 1e-5
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 3, V))
    if not use_main:  # the bias term alone: every query row has the same distribution
        torch.testing.assert_close(probs, probs[:, :, :1].expand_as(probs))


def test_joint_to_hyperedge_needs_a_score_term():
    with pytest.raises(ValueError):
        JointToHyperedgeAttention(16, 2, use_main=False, use_bias=False)


@pytest.mark.parametrize("version,layout", [(2, "standard"), (2, "reference"), (1, "standard")])
def test_model_sdpa_forward_equals_explicit_forward_and_maps(version, layout):
    n, m, frames, heads = 2, 2, 5, 4
    # float64: with random weights the logits reach ~10, where float32 rounding alone is ~1e-5
    model = randomize_(action_model(small_config(version=version, layout=layout, dim=32, heads=heads, depth=2)))
    model.double().eval()
    x = torch.randn(n, m, frames, V, 3, dtype=torch.float64)
    fused = model(x)  # with gradients: scaled_dot_product_attention everywhere
    with torch.no_grad():
        inference = model(x)  # CPU inference: the spatial attention (17 joints) unfused
        explicit, maps = model(x, return_attention=True)
    assert (fused - explicit).abs().max() <= 1e-5
    assert (inference - explicit).abs().max() <= 1e-5
    assert len(maps) == 2
    for depth_maps in maps:
        assert depth_maps["joint"].shape == (n * m * frames, heads, V, V)
        assert depth_maps["temporal"].shape == (n * m * V, heads, frames, frames)
        ones = torch.ones((), dtype=torch.float64)
        torch.testing.assert_close(depth_maps["joint"].sum(-1), ones.expand(n * m * frames, heads, V))
        torch.testing.assert_close(depth_maps["temporal"].sum(-1), ones.expand(n * m * V, heads, frames))
        if version == 1:
            assert depth_maps["hyperedge"] is None
        else:
            assert depth_maps["hyperedge"].shape == (n * m * frames, heads, V, V)
            torch.testing.assert_close(depth_maps["hyperedge"].sum(-1), ones.expand(n * m * frames, heads, V))


# ------------------------------------------------------------------------------------------------------
# The published (reference) head split of the joint-to-hyperedge attention


def row_major_flat(matrix):
    """flat[n] = matrix[n // cols, n % cols], by explicit index arithmetic."""
    rows, cols = matrix.shape
    n = range(rows * cols)
    return matrix[[i // cols for i in n], [i % cols for i in n]]


def pi(flat, m):
    """Pi(y)[j, c] = y[c * V + j] (REFERENCE 4.5), by explicit index arithmetic."""
    index = torch.tensor([[c * V + j for c in range(m)] for j in range(V)])
    return flat[index]


def literal_reference_j2e(attn, x, e, use_main=True, use_bias=True):
    """REFERENCE 4.5, one group and one head at a time."""
    groups, _, c = x.shape
    h = attn.num_heads
    d = c // h
    scale = d ** -0.5
    out = []
    for b in range(groups):
        y = x[b]
        q_mat = y @ attn.q.weight.T + attn.q.bias  # [V, C]
        kv_mat = y @ attn.kv.weight.T + attn.kv.bias  # [V, 2C]
        q_t = pi(row_major_flat(q_mat), c)
        e_t = pi(row_major_flat(e[b]), c)
        v_t = pi(row_major_flat(kv_mat)[c * V:2 * c * V], c)
        heads = []
        for eta in range(h):
            cols = slice(eta * d, (eta + 1) * d)
            q_h, e_h, v_h = q_t[:, cols], e_t[:, cols], v_t[:, cols]
            s = torch.zeros(V, V)
            if use_main:
                s = s + q_h @ e_h.T
            if use_bias:
                s = s + torch.ones(V, 1) @ (e_h @ attn.w1[eta]).reshape(1, V)
            a = torch.softmax(s * scale, dim=1)
            heads.append(a @ v_h)
        out.append(torch.cat(heads, dim=1) @ attn.proj.weight.T + attn.proj.bias)
    return torch.stack(out)


@pytest.mark.parametrize("use_main,use_bias", [(True, True), (False, True), (True, False)])
def test_reference_layout_matches_literal_published_math(use_main, use_bias):
    attn = randomize_(JointToHyperedgeAttention(32, 4, "reference", use_main, use_bias))
    assert attn.w1.abs().min() > 0
    x, e = torch.randn(3, V, 32), torch.randn(3, V, 32)
    with torch.no_grad():
        fused, _ = attn(x, e)
        explicit, _ = attn(x, e, return_probs=True)
        expected = literal_reference_j2e(attn, x, e, use_main, use_bias)
    assert (fused - expected).abs().max() <= 1e-5
    assert (explicit - expected).abs().max() <= 1e-5
    # and it really differs from the standard split with the same weights
    standard = JointToHyperedgeAttention(32, 4, "standard", use_main, use_bias)
    with torch.no_grad():
        for name in ("q", "proj"):
            getattr(standard, name).load_state_dict(getattr(attn, name).state_dict())
        standard.w1.copy_(attn.w1)
        standard.v.weight.copy_(attn.kv.weight[32:])
        standard.v.bias.copy_(attn.kv.bias[32:])
        assert (standard(x, e)[0] - fused).abs().max() > 1e-3


class ShiftedInput(nn.Module):
    """Wraps a value projection: layer(y + delta), so a perturbation reaches only the value path."""

    def __init__(self, layer, delta):
        super().__init__()
        self.layer, self.delta = layer, delta

    def forward(self, y):
        return self.layer(y + self.delta)


class ShiftedOutput(ShiftedInput):
    def forward(self, y):
        return self.layer(y) + self.delta


def value_layer_name(layout):
    return "kv" if layout == "reference" else "v"


@pytest.mark.parametrize("layout", ["reference", "standard"])
def test_which_joints_reach_the_value_path(layout):
    c = 32
    attn = randomize_(JointToHyperedgeAttention(c, 4, layout))
    x, e = torch.randn(3, V, c), torch.randn(3, V, c)
    weights = torch.randn(3, V, c)
    name = value_layer_name(layout)
    layer = getattr(attn, name)

    # gradient of the output w.r.t. each joint's value-projection input
    delta = torch.zeros(3, V, c, requires_grad=True)
    setattr(attn, name, ShiftedInput(layer, delta))
    (attn(x, e)[0] * weights).sum().backward()
    per_joint = delta.grad.abs().sum(dim=(0, 2))
    if layout == "reference":
        # Pi reads only the second half of the flat [V, 2C] k|v buffer, flat index >= C*V = 17C: joint 8's
        # second C channels and everything of joints 9..16. Joints 0..7 never reach the values.
        assert (per_joint[:8] == 0).all()
        assert (per_joint[8:] > 0).all()
    else:
        assert (per_joint > 0).all()

    # a perturbation of joints 0..7 through the value projection only
    shift = torch.zeros(3, V, c)
    shift[:, :8] = torch.randn(3, 8, c)
    with torch.no_grad():
        setattr(attn, name, layer)
        clean = attn(x, e)[0]
        setattr(attn, name, ShiftedInput(layer, shift))
        shifted = attn(x, e)[0]
    if layout == "reference":
        torch.testing.assert_close(shifted, clean, rtol=0, atol=1e-7)
    else:
        assert (shifted - clean).abs().max() > 1e-3

    if layout == "reference":  # exactly which entries of the k|v output are read: j * 2C + ch >= C * V
        out_delta = torch.zeros(3, V, 2 * c, requires_grad=True)
        setattr(attn, name, ShiftedOutput(layer, out_delta))
        (attn(x, e)[0] * weights).sum().backward()
        read = out_delta.grad.abs().sum(0) > 0  # [V, 2C]
        expected = torch.tensor([[j * 2 * c + ch >= c * V for ch in range(2 * c)] for j in range(V)])
        assert torch.equal(read, expected)


# ------------------------------------------------------------------------------------------------------
# Hyperedges


@pytest.mark.parametrize("label", [LABEL1, LABEL2])
def test_hyperedge_feature_is_projected_mean_of_members(label):
    edges = HyperedgeFeatures(16, label)
    x = torch.randn(4, V, 16)
    with torch.no_grad():
        out = edges(x)
        for b in range(4):
            for v in range(V):
                members = [u for u in range(V) if label[u] == label[v]]
                mean = sum(x[b, u] for u in members) / len(members)
                expected = edges.proj.weight @ mean
                torch.testing.assert_close(out[b, v], expected, rtol=1e-5, atol=1e-6)
    # the labels come from the config, never from the weights
    assert set(edges.state_dict()) == {"proj.weight"}


def test_incidence_matrix():
    h = incidence_matrix(LABEL2)
    assert h.shape == (V, 3)
    for v in range(V):
        assert h[v].tolist() == [float(e == LABEL2[v]) for e in range(3)]
    with pytest.raises(ValueError):
        incidence_matrix([0, 2] + [2] * 15)  # hyperedge 1 is empty
    with pytest.raises(ValueError):
        incidence_matrix([-1, 0] + [1] * 15)
    with pytest.raises(ValueError):
        incidence_matrix([1] * 17)  # hyperedge 0 is empty


# ------------------------------------------------------------------------------------------------------
# Model behaviour


@pytest.mark.parametrize("layout", ["standard", "reference"])
def test_swapping_persons_leaves_logits_unchanged(layout):
    model = randomize_(action_model(small_config(layout=layout, dim=16, heads=2, depth=2))).eval()
    x = torch.randn(3, 2, 6, V, 3)
    with torch.no_grad():
        a, b = model(x), model(x[:, [1, 0]])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a[0] - a[1]).abs().max() > 1e-4  # the logits do depend on the input


def zero_gradient_parameters(layout):
    maxlen = 6
    model = action_model(small_config(layout=layout, dim=16, heads=2, depth=2, maxlen=maxlen)).train()
    x = torch.randn(4, 2, maxlen, V, 3)  # T = maxlen: every row of the temporal embedding is used
    labels = torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), labels).backward()
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())
    zero = {name for name, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0}
    return model, zero


def test_every_parameter_gets_a_gradient_standard_layout():
    model, zero = zero_gradient_parameters("standard")
    assert zero == set()
    # w1 starts at zero but still gets a gradient: d(score bias)/d(w1) = e * d^-0.5, which does not
    # depend on w1 itself, and the loss depends on the per-key bias through the softmax.
    hyper = model.backbone.spatial_blocks[0].hyper_block.attn
    assert (hyper.w1 == 0).all() and hyper.w1.grad.abs().min() > 0


def test_gradients_in_the_reference_layout():
    model, zero = zero_gradient_parameters("reference")
    # Every parameter still learns: the k|v weights included. The published layout reads its values from
    # the second half of the FLAT [V, 2C] buffer (flat index >= C*V), which holds the "k" channels of
    # joints 9..16 as well as the "v" channels of joints 8..16; so even the k rows of kv.weight get a
    # gradient (what is dead is the first half of the flat buffer, i.e. the outputs of joints 0..7 and the
    # k channels of joint 8, not any parameter).
    assert zero == set()
    for block in model.backbone.spatial_blocks:
        kv_grad = block.hyper_block.attn.kv.weight.grad
        assert (kv_grad.abs().sum(dim=1) > 0).all()  # every row, k half (0..C-1) included


def test_drop_path():
    x = torch.ones(4000, 3, 5)
    drop = DropPath(0.5)
    drop.eval()
    assert drop(x) is x or torch.equal(drop(x), x)
    drop.train()
    out = drop(x)
    per_row = out.flatten(1)
    assert ((per_row == 0).all(1) | (per_row == 2).all(1)).all()  # whole rows dropped or scaled by 1/keep
    dropped = (per_row == 0).all(1).float().mean().item()
    assert abs(dropped - 0.5) < 0.05
    assert torch.equal(DropPath(0.0).train()(x), x)


# ------------------------------------------------------------------------------------------------------
# Parameter counts against the published inventory (REFERENCE 4.10)

C_PUB, DEPTH_PUB = 128, 6
COMMON_BLOCK, TEMPORAL_BLOCK = 134_793, 132_480
HYPER_BLOCK = {6: 149_112, 3: 149_061}
GLOBAL = 34_947
POSE_HEAD = 643
ACTION_HEAD = {60: 2_292_796, 120: 2_354_296}
PUBLISHED_TOTAL = {60: 4_826_053, 120: 4_887_553}
PUBLISHED_BACKBONE = {6: 2_533_257, 3: 2_532_951}


@pytest.mark.parametrize("classes,label,num_edges", [(60, LABEL1, 6), (120, LABEL1, 6), (60, LABEL2, 3)])
def test_parameter_count_matches_published_minus_what_we_drop(classes, label, num_edges):
    published_backbone = DEPTH_PUB * (COMMON_BLOCK + HYPER_BLOCK[num_edges] + TEMPORAL_BLOCK) + GLOBAL
    assert published_backbone == PUBLISHED_BACKBONE[num_edges]
    published = published_backbone + ACTION_HEAD[classes]
    if label == LABEL1:
        assert published == PUBLISHED_TOTAL[classes]
    k_half = C_PUB * C_PUB + C_PUB  # the k rows of kv [2C, C] and their bias
    derived = V + V * num_edges + 1  # joint_label, hyper_matrix, merge_weight
    dropped_backbone = DEPTH_PUB * (k_half + derived) + POSE_HEAD
    expected = published - dropped_backbone

    cfg = Config()  # defaults: C 128, depth 6, 8 heads, T 243, hidden 1024, standard layout
    cfg.data.action_classes = classes
    cfg.hyper.joint_label = [list(label)]
    assert (cfg.model.dim_rep, cfg.model.depth, cfg.model.num_heads, cfg.model.maxlen) == (128, 6, 8, 243)
    model = action_model(cfg)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(p.numel() for p in model.backbone.parameters()) == published_backbone - dropped_backbone


# ------------------------------------------------------------------------------------------------------
# Learning


def test_tiny_model_memorises_a_few_samples():
    clip_len, count = 12, 8
    data = synthetic.generate("demo", seed=0, num_samples=count)
    clips = [make_clip(a["keypoint"], a["keypoint_score"], a["img_shape"], clip_len) for a in data["annotations"]]
    x = torch.from_numpy(np.stack(clips))
    labels = torch.tensor([a["label"] for a in data["annotations"]])
    assert x.shape == (count, 2, clip_len, V, 3)

    model = action_model(small_config(dim=32, heads=4, depth=1, maxlen=clip_len, hidden=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    accuracy = 0.0
    for step in range(300):
        model.train()
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(x).argmax(-1) == labels).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"train accuracy {accuracy} after {step + 1} steps (loss {loss.item():.3f})"
