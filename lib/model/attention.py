"""Attention, MLP and stochastic depth for the skeleton transformer.

Every attention computes softmax(q k^T * d^-0.5 + bias) v through `attend`: fused
`scaled_dot_product_attention` normally, an explicit softmax when the caller asks for the
attention probabilities (visualisation). Shapes: B' tokens groups (N*M*T for spatial attention over
the V = 17 joints, N*M*V for temporal attention over the T frames), h heads, d = C / h.
"""
import torch
import torch.nn.functional as F
from torch import nn


def attend(q, k, v, bias=None, return_probs: bool = False):
    """softmax(q k^T * d^-0.5 + bias) v. q [B', h, Lq, d], k and v [B', h, Lk, d], bias broadcastable
    to [B', h, Lq, Lk] or None. Returns (output [B', h, Lq, d], probabilities or None)."""
    if not return_probs:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1)
    return probs @ v, probs


def split_heads(x, num_heads: int):
    """[B', L, C] -> [B', h, L, C / h]"""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def merge_heads(x):
    """[B', h, L, d] -> [B', L, h * d]"""
    return x.transpose(1, 2).flatten(2)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole residual branch for a random subset of the rows of
    dim 0 and rescale the rest. Rows are token groups (a frame of a person, or a joint of a person)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional additive bias on the scores (before the softmax).
    Temporal attention uses it without a bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None, return_probs: bool = False):
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)  # 3 x [B', h, L, d]
        out, probs = attend(q, k, v, bias, return_probs)
        return self.proj(merge_heads(out)), probs


class JointToJointAttention(SelfAttention):
    """Self-attention over the 17 joints of a frame with a learnable joint-to-joint bias
    alpha * G, G [h, V, V], added to q k^T before scaling (as published):
    softmax((q k^T + alpha * G) * d^-0.5). G starts as the normalised skeleton adjacency
    (`initial_bias`), alpha at 1. Without `use_bias` the attention is plain."""

    def __init__(self, dim: int, num_heads: int, initial_bias: torch.Tensor, use_bias: bool = True):
        super().__init__(dim, num_heads)
        self.use_bias = use_bias
        if use_bias:
            self.joint_bias = nn.Parameter(initial_bias.expand(num_heads, -1, -1).clone())  # [h, V, V]
            self.alpha = nn.Parameter(torch.ones(()))

    def forward(self, x, return_probs: bool = False):
        head_dim = x.shape[-1] // self.num_heads
        bias = self.alpha * self.joint_bias * head_dim ** -0.5 if self.use_bias else None
        return super().forward(x, bias, return_probs)


def reference_scramble(x, num_tokens: int):
    """The published head split of the joint-to-hyperedge attention: the flat channels of a group are
    read as if they were [C, V] (channel-first) and transposed, i.e. out[j, c] = flat[c * V + j].
    [B', V * C] or [B', V, C] -> [B', V, C]."""
    return x.flatten(1).unflatten(1, (-1, num_tokens)).transpose(1, 2)


class JointToHyperedgeAttention(nn.Module):
    """Each joint attends to the hyperedge features broadcast to the joints (keys without projection),
    with a learnable per-key bias: scores = ([main] q e^T + [bias] 1 (e w1)^T) * d^-0.5, values from
    the normalised joints. `layout='reference'` reproduces the published head split exactly
    (`reference_scramble` of q, e and the second half of the flat k|v projection)."""

    def __init__(self, dim: int, num_heads: int, layout: str = "standard", use_main: bool = True,
                 use_bias: bool = True):
        super().__init__()
        if not (use_main or use_bias):
            raise ValueError("joint-to-hyperedge attention needs the main term or the bias term")
        self.num_heads, self.layout, self.use_main, self.use_bias = num_heads, layout, use_main, use_bias
        self.q = nn.Linear(dim, dim)
        if layout == "reference":
            self.kv = nn.Linear(dim, 2 * dim)  # the published fused key|value projection
            value_layer = self.kv
        else:
            self.v = nn.Linear(dim, dim)
            value_layer = self.v
        self.w1 = nn.Parameter(torch.zeros(num_heads, dim // num_heads))  # [h, d]
        self.proj = nn.Linear(dim, dim)
        for layer in (self.q, value_layer, self.proj):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x, edge_features, return_probs: bool = False):
        """x: normalised joints [B', V, C]; edge_features: hyperedge feature of each joint [B', V, C]."""
        num_tokens = x.shape[1]
        q, e = self.q(x), edge_features
        if self.layout == "reference":
            kv = self.kv(x).flatten(1)  # [B', V * 2C]
            value = reference_scramble(kv[:, kv.shape[1] // 2:], num_tokens)
            q, e = reference_scramble(q, num_tokens), reference_scramble(e, num_tokens)
        else:
            value = self.v(x)
        q, e, value = (split_heads(t, self.num_heads) for t in (q, e, value))  # [B', h, V, d]
        head_dim = q.shape[-1]
        bias = None
        if self.use_bias:
            key_bias = torch.einsum("bhkd,hd->bhk", e, self.w1)  # one bias per key (hyperedge token)
            bias = key_bias.unsqueeze(2) * head_dim ** -0.5  # [B', h, 1, V], the same for every query
        if not self.use_main:
            q = torch.zeros_like(q)  # scores come from the bias alone
        out, probs = attend(q, e, value, bias, return_probs)
        return self.proj(merge_heads(out)), probs
