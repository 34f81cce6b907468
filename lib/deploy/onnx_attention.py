"""ONNX Runtime's fused attention nodes for the export: `runtime_attention(model)` returns a copy of the
model whose attention modules are replaced by export versions with the same weights.

Each attention becomes one com.microsoft node, in place of about ten standard ONNX nodes with two head
transposes: `Attention` (qkv projection included, written straight into the head layout) for the biased
joint-to-joint attention, `MultiHeadAttention` for the others (for the temporal attention with the q, k
and v biases added inside the node, so the graph has no slices of a qkv output). Outside an export the
replacements compute exactly what the model's own modules compute (`multi_head_attention`).
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from lib.model.attention import JointToHyperedgeAttention, JointToJointAttention, SelfAttention, multi_head_attention


def runtime_bias(bias, queries: int):
    """An attention bias in the shape ONNX Runtime's attention nodes take: [B' or 1, h, Lq, Lk]."""
    return bias.reshape(-1, *bias.shape[-3:]).expand(-1, -1, queries, -1)


def typed_like(value, node):
    """Type the output of a custom ONNX node like `value` [B', L, C] but with unknown sizes: the sizes of
    the tracing input would otherwise be baked into the graph (ONNX Runtime's fusions read them)."""
    return node.setType(value.type().with_sizes([None, None, None]))


def absent(g):
    """An omitted optional input of an ONNX node."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


class RuntimeMultiHeadAttention(torch.autograd.Function):
    """`multi_head_attention` as com.microsoft MultiHeadAttention: splits the heads, scales, adds the bias,
    softmax and both products. `projection_bias` [3C] (or None), the biases of the q, k and v projections,
    is added by the node as it splits the heads."""

    @staticmethod
    def forward(ctx, q, k, v, projection_bias, bias, num_heads):
        if projection_bias is not None:
            q, k, v = (t + b for t, b in zip((q, k, v), projection_bias.chunk(3)))
        return multi_head_attention(q, k, v, num_heads, bias)[0]

    @staticmethod
    def symbolic(g, q, k, v, projection_bias, bias, num_heads):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v,
                   absent(g) if projection_bias is None else projection_bias, absent(g),
                   absent(g) if bias is None else bias, num_heads_i=num_heads)
        return typed_like(q, out)  # [B', Lq, C] like q


class RuntimeBiasedSelfAttention(torch.autograd.Function):
    """A biased self-attention (qkv projection included) as com.microsoft Attention, which multiplies by the
    packed qkv weight straight into the head layout (faster than the qkv MatMul, its slices and
    MultiHeadAttention; for the unbiased temporal attention MultiHeadAttention is the faster one)."""

    @staticmethod
    def forward(ctx, x, qkv_weight, qkv_bias, bias, num_heads):
        q, k, v = F.linear(x, qkv_weight, qkv_bias).chunk(3, dim=-1)
        return multi_head_attention(q, k, v, num_heads, bias)[0]

    @staticmethod
    def symbolic(g, x, qkv_weight, qkv_bias, bias, num_heads):
        weight = g.op("Transpose", qkv_weight, perm_i=[1, 0])  # [C, 3C], folded into a constant
        out = g.op("com.microsoft::Attention", x, weight, qkv_bias, absent(g), absent(g), bias, num_heads_i=num_heads)
        return typed_like(x, out)  # [B', L, C] like x


class ExportedSelfAttention(nn.Module):
    """An unbiased `SelfAttention` (temporal): q, k, v from the three weight blocks, biases added by the node."""

    def __init__(self, attn: SelfAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x, return_probs: bool = False):
        a = self.attn
        q, k, v = (x @ weight.t() for weight in a.qkv.weight.chunk(3))
        return a.proj(RuntimeMultiHeadAttention.apply(q, k, v, a.qkv.bias, None, a.num_heads)), None


class ExportedJointToJointAttention(nn.Module):
    def __init__(self, attn: JointToJointAttention):
        super().__init__()
        self.attn = attn
        self.plain = ExportedSelfAttention(attn)

    def forward(self, x, return_probs: bool = False):
        a = self.attn
        bias = a.score_bias(x.shape[-1] // a.num_heads)
        if bias is None:
            return self.plain(x)
        out = RuntimeBiasedSelfAttention.apply(x, a.qkv.weight, a.qkv.bias, runtime_bias(bias, x.shape[1]), a.num_heads)
        return a.proj(out), None


class ExportedJointToHyperedgeAttention(nn.Module):
    def __init__(self, attn: JointToHyperedgeAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x, edge_features, return_probs: bool = False):
        a = self.attn
        q, e, value = a.queries_keys_values(x, edge_features)
        return a.proj(RuntimeMultiHeadAttention.apply(q, e, value, None, None, a.num_heads)), None


EXPORTED = ((JointToJointAttention, ExportedJointToJointAttention),
            (JointToHyperedgeAttention, ExportedJointToHyperedgeAttention),
            (SelfAttention, ExportedSelfAttention))  # the subclass before its base class


def runtime_attention(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with every attention module replaced by its export version."""
    exported = copy.deepcopy(model).eval()
    for name, module in list(exported.named_modules()):
        for original, replacement in EXPORTED:
            if isinstance(module, original):
                parent_name, _, child = name.rpartition(".")
                setattr(exported.get_submodule(parent_name), child, replacement(module))
                break
    return exported
