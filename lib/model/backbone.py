"""The spatial-temporal backbone: depth x (spatial block over the joints of each frame, then temporal block
over the frames of each joint), on [B, T, V, C] with B = N * M (persons folded into the batch).

A spatial block is a joint-to-joint block (self-attention with the learnable skeleton bias) followed,
in version 2, by a hypergraph block (joints attend to their body parts' features). Positional
embeddings are added once, before the first spatial and the first temporal block, and one spatial and
one temporal LayerNorm are shared by all depths, as published.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lib import skeleton
from lib.model.attention import DropPath, JointToHyperedgeAttention, JointToJointAttention, Mlp, SelfAttention
from lib.model.hypergraph import HyperedgeFeatures


@dataclass
class BackboneConfig:
    """The backbone's settings (config keys in brackets): everything needed to rebuild it from weights."""
    dim: int = 128  # [dim_rep]
    depth: int = 6
    num_heads: int = 8
    mlp_ratio: float = 2.0
    max_frames: int = 243  # [maxlen] length of the temporal positional embedding
    in_channels: int = 3  # x, y, confidence
    drop_path_rate: float = 0.1
    # [block_dropout] the published dropout inside the spatial blocks, p = each block's drop-path rate: after
    # the joint-to-joint attention's projection and in its MLP, after the hypergraph attention's projection
    block_dropout: bool = True
    with_hypergraph: bool = True  # [version] 2
    joint_label: tuple = (0, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3, 4, 4, 4, 5, 5, 5)  # [hyper.joint_label]
    joint_bias_init: str = "uniform"  # [hyper_relation_bias] uniform: normalised skeleton adjacency; none: identity
    j2j_adjacency: bool = True
    j2e_layout: str = "standard"
    j2e_main: bool = True
    j2e_bias: bool = True
    attention: str = "auto"  # [attention] how attention is computed (lib/model/attention.py)


class JointToJointBlock(nn.Module):
    """Pre-norm joint-to-joint attention and MLP over the joints of each frame, x [B*T, V, C]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, initial_bias: torch.Tensor, use_bias: bool,
                 drop_path: float, drop: float, attention: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = JointToJointAttention(dim, num_heads, initial_bias, use_bias, proj_drop=drop, attention=attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, return_probs: bool = False):  # x [B*T, V, C]
        out, probs = self.attn(self.norm1(x), return_probs)
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x))), probs


class HypergraphBlock(nn.Module):
    """Pre-norm joint-to-hyperedge attention and MLP (no dropout in the MLP, as published), x [B*T, V, C]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, joint_label, layout: str, use_main: bool,
                 use_bias: bool, drop_path: float, drop: float, attention: str = "auto"):
        super().__init__()
        self.edges = HyperedgeFeatures(dim, joint_label)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = JointToHyperedgeAttention(dim, num_heads, layout, use_main, use_bias, proj_drop=drop,
                                              attention=attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x, return_probs: bool = False):  # x [B*T, V, C]
        out, probs = self.attn(self.norm1(x), self.edges(x), return_probs)  # edges from the un-normalised x
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x))), probs


class SelfAttentionBlock(nn.Module):
    """Pre-norm self-attention and MLP over the tokens of each group, x [B', L, C]: the temporal block
    (over the frames of each joint, [B*V, T, C])."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, attention: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, attention=attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x, return_probs: bool = False):  # x [B', L, C]
        out, probs = self.attn(self.norm1(x), return_probs=return_probs)
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x))), probs


class SpatialBlock(nn.Module):
    """Joint-to-joint block, then (version 2) the hypergraph block."""

    def __init__(self, joint_block: JointToJointBlock, hyper_block: HypergraphBlock = None):
        super().__init__()
        self.joint_block = joint_block
        self.hyper_block = hyper_block

    def forward(self, x, return_probs: bool = False):
        x, j2j = self.joint_block(x, return_probs)
        j2e = None
        if self.hyper_block is not None:
            x, j2e = self.hyper_block(x, return_probs)
        return x, j2j, j2e


class SkeletonBackbone(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.joint_embed = nn.Linear(cfg.in_channels, cfg.dim)
        self.spatial_pos = nn.Parameter(torch.zeros(1, skeleton.NUM_JOINTS, cfg.dim))
        self.temporal_pos = nn.Parameter(torch.zeros(1, cfg.max_frames, cfg.dim))
        initial = skeleton.normalized_adjacency() if cfg.joint_bias_init == "uniform" else np.eye(skeleton.NUM_JOINTS)
        drop_path = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        drop = drop_path if cfg.block_dropout else [0.0] * cfg.depth
        self.spatial_blocks = nn.ModuleList(
            SpatialBlock(JointToJointBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, torch.as_tensor(initial, dtype=torch.float32),
                                           cfg.j2j_adjacency, p, d, cfg.attention),
                         HypergraphBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.joint_label, cfg.j2e_layout,
                                         cfg.j2e_main, cfg.j2e_bias, p, d, cfg.attention) if cfg.with_hypergraph else None)
            for p, d in zip(drop_path, drop))
        self.temporal_blocks = nn.ModuleList(SelfAttentionBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, p, cfg.attention)
                                             for p in drop_path)
        self.spatial_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.temporal_norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def embed(self, x):
        """x [B, T, V, Cin] -> tokens [B, T, V, C]: each joint embedded, plus its spatial position."""
        return self.joint_embed(x) + self.spatial_pos

    def forward(self, x, return_attention: bool = False):
        """x [B, T, V, Cin] -> features [B, T, V, C]; with return_attention also a list, one dict per
        depth, of attention probabilities: 'joint' [B*T, h, V, V], 'hyperedge' [B*T, h, V, V] (version 2),
        'temporal' [B*V, h, T, T]."""
        return self.encode(self.embed(x), return_attention)

    def encode(self, tokens, return_attention: bool = False):
        """Embedded tokens [B, T, V, C] -> features [B, T, V, C] (and the maps, as `forward`)."""
        batch, frames, joints, _ = tokens.shape
        if frames > self.cfg.max_frames:
            raise ValueError(f"clip of {frames} frames is longer than the model's {self.cfg.max_frames}")
        x = tokens.flatten(0, 1)  # [B*T, V, C]
        maps = []
        for depth, (spatial, temporal) in enumerate(zip(self.spatial_blocks, self.temporal_blocks)):
            x, j2j, j2e = spatial(x, return_attention)
            x = self.spatial_norm(x)
            x = x.unflatten(0, (batch, frames)).transpose(1, 2).flatten(0, 1)  # [B*V, T, C]
            if depth == 0:
                x = x + self.temporal_pos[:, :frames]
            x, temporal_probs = temporal(x, return_attention)
            x = self.temporal_norm(x)
            x = x.unflatten(0, (batch, joints)).transpose(1, 2)  # [B, T, V, C]
            if depth < self.cfg.depth - 1:
                x = x.flatten(0, 1)  # [B*T, V, C]
            if return_attention:
                maps.append({"joint": j2j, "hyperedge": j2e, "temporal": temporal_probs})
        return (x, maps) if return_attention else x


def in_chunks(fn, chunk: int, *tensors: torch.Tensor) -> torch.Tensor:
    """fn(*tensors) computed on `chunk` rows of the tensors at a time (0: all at once) and concatenated, for
    an `fn` that treats its rows independently. With gradients each chunk is checkpointed: its activations
    are dropped after the forward pass and recomputed (with the same random numbers) in the backward pass,
    so one chunk's activations are alive at a time: less memory for one more forward pass."""
    if not chunk or len(tensors[0]) <= chunk:
        return fn(*tensors)
    parts = zip(*(t.split(chunk) for t in tensors))
    if torch.is_grad_enabled():
        return torch.cat([checkpoint(fn, *part, use_reentrant=False) for part in parts])
    return torch.cat([fn(*part) for part in parts])
