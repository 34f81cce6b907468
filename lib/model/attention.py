"""Attention, MLP and stochastic depth for the skeleton transformer.

Every attention computes softmax(q k^T * d^-0.5 + bias) v through `multi_head_attention`. Shapes: B' token
groups (N*M*T for spatial attention over the V = 17 joints, N*M*V for temporal attention over the T
frames), h heads, d = C / h. Export code (lib/deploy) replaces these modules with its own at export time;
nothing here knows about it.

How the product is computed is the model setting `attention` (ModelConfig.attention), the same numbers every way:
  explicit        q k^T, + bias, softmax, @ v as separate operations (torch.compile fuses them)
  sdpa            F.scaled_dot_product_attention, PyTorch picking its kernel
  sdpa_cudnn, sdpa_efficient, sdpa_math   that function restricted to one back-end (cuDNN's fused
                  attention, the memory-efficient kernel, the reference maths)
  flex            FlexAttention with the bias as a score modification (fast only under torch.compile)
  auto            per attention, by its number of keys (`resolve_attention`)
benchmarks/bench_gpu.py measures each at the model's shapes.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "sdpa_math": SDPBackend.MATH}
EXPLICIT_MAX_KEYS = 32  # `auto`: attention over at most this many keys (the 17 joints) runs explicit


def resolve_attention(attention: str, num_keys: int) -> str:
    """The implementation `attention` stands for. `auto` is explicit over at most EXPLICIT_MAX_KEYS keys (the
    17 joints: fused kernels are built for long sequences and on a 17-key row compute mostly padding) and
    `sdpa` over more (the frames): each measured fastest, forward and backward, on an H200, and over the joints
    on the CPU too (benchmarks/README.md, "Attention implementations")."""
    if attention != "auto":
        return attention
    return "explicit" if num_keys <= EXPLICIT_MAX_KEYS else "sdpa"


def flex_attention(q, k, v, bias=None):
    """FlexAttention over [B', h, L, d]; `bias` [1, h, Lq, Lk] (or None) is added to the scaled scores."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    if bias is None:
        return flex(q, k, v)
    head_bias = bias[0]  # [h, Lq, Lk]

    def add_bias(score, batch, head, q_index, k_index):
        return score + head_bias[head, q_index, k_index]

    return flex(q, k, v, score_mod=add_bias)


def multi_head_attention(q, k, v, num_heads: int, bias=None, return_probs: bool = False, attention: str = "auto"):
    """softmax(q k^T * d^-0.5 + bias) v per head. q [B', Lq, C], k and v [B', Lk, C]; the rest as `attend`."""
    q, k, v = (t.unflatten(-1, (num_heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B', h, L, d]
    return attend(q, k, v, bias, return_probs, attention)


def attend(q, k, v, bias=None, return_probs: bool = False, attention: str = "auto"):
    """softmax(q k^T * d^-0.5 + bias) v on heads: q [B', h, Lq, d], k and v [B', h, Lk, d], bias broadcastable
    to [B', h, Lq, Lk] (flex: [1, h, Lq, Lk]) or None. Returns (output [B', Lq, h * d], probabilities
    [B', h, Lq, Lk] or None). `attention` is one of the names above; asking for the probabilities always
    runs explicit."""
    attention = "explicit" if return_probs else resolve_attention(attention, k.shape[-2])
    probs = None
    if attention == "explicit":
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if bias is not None:
            scores = scores + bias
        probs = scores.softmax(dim=-1)
        out = probs @ v
    elif attention == "flex":
        out = flex_attention(q, k, v, bias)
    elif attention in SDPA_BACKENDS:
        with sdpa_kernel(SDPA_BACKENDS[attention]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).flatten(2), probs if return_probs else None  # [B', Lq, C]


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
    """fc1, GELU, dropout, fc2, dropout (`drop` 0: no dropout)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional additive bias on the scores (before the softmax) and
    dropout `proj_drop` after the output projection. Temporal attention uses it without a bias."""

    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0, attention: str = "auto"):
        super().__init__()
        self.num_heads, self.attention = num_heads, attention
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, bias=None, return_probs: bool = False):  # x [B', L, C]
        attention = "explicit" if return_probs else resolve_attention(self.attention, x.shape[1])
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # [3, B', h, L, d]
        if attention == "explicit":
            qkv = qkv.contiguous()  # the products need contiguous heads: one copy for q, k and v together
        q, k, v = qkv.unbind(0)  # 3 x [B', h, L, d]; SDPA reads them strided, as they are
        out, probs = attend(q, k, v, bias, return_probs, attention)
        return self.proj_drop(self.proj(out)), probs


class JointToJointAttention(SelfAttention):
    """Self-attention over the 17 joints of a frame with a learnable joint-to-joint bias
    alpha * G, G [h, V, V], added to q k^T before scaling (as published):
    softmax((q k^T + alpha * G) * d^-0.5). G starts as the normalised skeleton adjacency
    (`initial_bias`), alpha at 1. Without `use_bias` the attention is plain."""

    def __init__(self, dim: int, num_heads: int, initial_bias: torch.Tensor, use_bias: bool = True,
                 proj_drop: float = 0.0, attention: str = "auto"):
        super().__init__(dim, num_heads, proj_drop, attention)
        self.use_bias = use_bias
        if use_bias:
            self.joint_bias = nn.Parameter(initial_bias.expand(num_heads, -1, -1).clone())  # [h, V, V]
            self.alpha = nn.Parameter(torch.ones(()))

    def score_bias(self, head_dim: int):
        """The bias added to the scaled scores, [1, h, V, V] (4-D keeps SDPA on its fused CPU kernel), or None."""
        return (self.alpha * self.joint_bias * head_dim ** -0.5).unsqueeze(0) if self.use_bias else None

    def forward(self, x, return_probs: bool = False):  # x [B', V, C]
        return super().forward(x, self.score_bias(x.shape[-1] // self.num_heads), return_probs)


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
                 use_bias: bool = True, proj_drop: float = 0.0, attention: str = "auto"):
        super().__init__()
        if not (use_main or use_bias):
            raise ValueError("joint-to-hyperedge attention needs the main term or the bias term")
        self.num_heads, self.layout, self.use_main, self.use_bias = num_heads, layout, use_main, use_bias
        self.attention = attention
        self.q = nn.Linear(dim, dim)
        if layout == "reference":
            self.kv = nn.Linear(dim, 2 * dim)  # the published fused key|value projection
            value_layer = self.kv
        else:
            self.v = nn.Linear(dim, dim)
            value_layer = self.v
        self.w1 = nn.Parameter(torch.zeros(num_heads, dim // num_heads))  # [h, d]
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        for layer in (self.q, value_layer, self.proj):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def queries_keys_values(self, x, edge_features):
        """The attention's q, k (the hyperedge features) and v, each [B', V, C], in the head layout."""
        num_tokens = x.shape[1]
        q, e = self.q(x), edge_features
        if self.layout == "reference":
            kv = self.kv(x).flatten(1)  # [B', V * 2C]
            value = reference_scramble(kv[:, kv.shape[1] // 2:], num_tokens)
            q, e = reference_scramble(q, num_tokens), reference_scramble(e, num_tokens)
        else:
            value = self.v(x)
        if not self.use_main:
            q = q * 0.0  # scores come from the bias alone (zeros that keep the dynamic batch in an export)
        if self.use_bias:  # the per-key bias is a bias on the queries: (q + w1) e^T = q e^T + 1 (e w1)^T per head
            q = q + self.w1.flatten()  # [B', V, C]
        return q, e, value

    def forward(self, x, edge_features, return_probs: bool = False):
        """x: normalised joints [B', V, C]; edge_features: hyperedge feature of each joint [B', V, C]."""
        q, e, value = self.queries_keys_values(x, edge_features)
        out, probs = multi_head_attention(q, e, value, self.num_heads, None, return_probs, self.attention)
        return self.proj_drop(self.proj(out)), probs
