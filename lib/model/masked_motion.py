"""Masked motion prediction: self-supervised pretraining of the action backbone on unlabelled 2D clips.

A token is one joint over a segment of `segment` consecutive frames. Most tokens are hidden (chosen
preferring tokens that move); the backbone reads the clip with the hidden tokens' inputs replaced by a
learned mask token, and a light decoder predicts, for every frame of a hidden token, the joint's 2D
position and its 2D move over the next `segment` frames. Each term compares, on hidden tokens only and
only where the joint is present (at both ends, for a move), the prediction with the truth normalised over
those entries of its sequence: positions centred and divided by their root mean square, moves divided by
theirs. Shapes: B sequences (persons folded into the batch), T frames, V = 17 joints, C backbone width,
D decoder width.
"""
import torch
import torch.nn.functional as F
from torch import nn

from lib import skeleton
from lib.model.backbone import SelfAttentionBlock, SkeletonBackbone, in_chunks


def joint_motion(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, V, 3] (x, y, confidence) -> (motion [B, T, V, 2]: each joint's move over the next `stride`
    frames, zero in the last `stride` frames; valid [B, T, V]: the joint is present (confidence > 0) at
    both ends)."""
    present = x[..., 2] > 0
    motion = torch.zeros_like(x[..., :2])
    motion[:, :-stride] = x[:, stride:, :, :2] - x[:, :-stride, :, :2]
    valid = torch.zeros_like(present)
    valid[:, :-stride] = present[:, stride:] & present[:, :-stride]
    return motion * valid[..., None], valid


def segments(t: torch.Tensor, segment: int) -> torch.Tensor:
    """[B, T, V, ...] -> [B, T/segment, V, segment, ...]: the frames of each token together."""
    b, frames, joints = t.shape[:3]
    return t.reshape(b, frames // segment, segment, joints, *t.shape[3:]).transpose(2, 3)


def motion_aware_mask(x: torch.Tensor, ratio: float, segment: int, tau: float) -> torch.Tensor:
    """Hide round(ratio * L) of the L = T/segment * V tokens of each sequence, drawn without replacement
    with probabilities softmax(m / (tau * max m)), m a token's mean absolute motion: the more a token
    moves, the likelier it is hidden (tau -> infinity: uniform). x [B, T, V, 3] -> mask [B, T, V] (True:
    hidden; every frame of a hidden token)."""
    motion, valid = joint_motion(x, 1)
    per_token = segments(motion.abs().sum(-1), segment).sum(-1) / segments(valid, segment).sum(-1).clamp(min=1)
    b, steps, joints = per_token.shape  # [B, T/segment, V]
    scores = per_token.reshape(b, -1)
    scores = scores / (tau * scores.amax(dim=1, keepdim=True) + 1e-10)
    uniform = torch.rand_like(scores).clamp(1e-10, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(uniform))
    hidden = round(ratio * scores.shape[1])
    chosen = (F.log_softmax(scores, dim=1) + gumbel).topk(hidden, dim=1).indices  # Gumbel top-k sampling
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, chosen, True)
    return mask.reshape(b, steps, 1, joints).expand(-1, -1, segment, -1).reshape(b, steps * segment, joints)


def root_mean_square(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The root mean square of `t` [B, T, V, 2] over the entries where `weight` [B, T, V, 2] is 1, per
    sequence, plus 1e-6: [B, 1, 1, 1]."""
    entries = weight.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    return ((t ** 2 * weight).sum(dim=(1, 2, 3), keepdim=True) / entries).sqrt() + 1e-6


def normalisation(target: torch.Tensor, weight: torch.Tensor, centre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [B, 1, 1, 2], scale [B, 1, 1, 1]) of `target` [B, T, V, 2] over the entries where `weight`
    [B, T, V, 2] is 1, per sequence: the normalised target is (target - mean) / scale. The mean of x and
    of y with `centre`, else zero; the scale is the root mean square after the mean is taken off."""
    mean = torch.zeros_like(target[:, :1, :1])
    if centre:
        mean = (target * weight).sum(dim=(1, 2), keepdim=True) / weight.sum(dim=(1, 2), keepdim=True).clamp(min=1)
    return mean, root_mean_square(target - mean, weight)


def masked_loss(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor,
                centre: bool = False):
    """Mean squared error between `predicted` [B, T, V, 2] and `target` [B, T, V, 2] normalised per
    sequence, over the entries that are hidden (`mask` [B, T, V]) and valid (`valid` [B, T, V]) only. The
    normalisation (`normalisation`) uses those same entries, so nothing else reaches the loss. Returns
    (loss, number of entries it averages)."""
    weight = (valid & mask)[..., None].expand_as(target).float()  # [B, T, V, 2]
    mean, scale = normalisation(target, weight, centre)
    target = (target - mean) / scale
    entries = weight.sum()
    loss = (((predicted - target) ** 2) * weight).sum() / entries.clamp(min=1)
    return loss, int(entries)


def pretraining_loss(predicted: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, segment: int):
    """The objective: predicted [B, T, V, 4] (position x, y; motion x, y), x [B, T, V, 3] the clip, mask
    [B, T, V] -> (position loss + motion loss, sums of each term times its entries and the entries, for
    exact averages over many batches). Positions count where the joint is present, moves where it is
    present at both ends (see `joint_motion`)."""
    position_loss, positions = masked_loss(predicted[..., :2], x[..., :2], x[..., 2] > 0, mask, centre=True)
    motion_loss, moves = masked_loss(predicted[..., 2:], *joint_motion(x, segment), mask)
    sums = {"position_loss": position_loss.item() * positions, "position_entries": positions,
            "motion_loss": motion_loss.item() * moves, "motion_entries": moves}
    return position_loss + motion_loss, sums


class MaskedMotionModel(nn.Module):
    """The action backbone (encoder) with a mask token and a light factorised decoder: `decoder_depth`
    pairs of self-attention blocks over the joints of a frame and over the frames of a joint."""

    def __init__(self, backbone: SkeletonBackbone, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4):
        super().__init__()
        self.backbone = backbone
        dim, frames = backbone.cfg.dim, backbone.cfg.max_frames
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.decoder_spatial_pos = nn.Parameter(torch.zeros(1, skeleton.NUM_JOINTS, decoder_dim))
        self.decoder_temporal_pos = nn.Parameter(torch.zeros(1, frames, decoder_dim))
        self.decoder_spatial = nn.ModuleList(SelfAttentionBlock(decoder_dim, decoder_heads, 2.0, 0.0)
                                             for _ in range(decoder_depth))
        self.decoder_temporal = nn.ModuleList(SelfAttentionBlock(decoder_dim, decoder_heads, 2.0, 0.0)
                                              for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.predict = nn.Linear(decoder_dim, 4)
        self.micro_batch = 0

    def set_micro_batch(self, clips: int):
        """Run on `clips` clips at a time (0: the whole batch at once), checkpointed when gradients are on
        (see `in_chunks`); the result equals one pass over the whole batch."""
        self.micro_batch = clips
        return self

    def forward(self, x, mask):
        """x [N, M, T, V, 3], mask [N*M, T, V] (True: hidden) -> predicted [N*M, T, V, 4] (position, motion)."""
        return in_chunks(self.reconstruct, self.micro_batch * x.shape[1], x.flatten(0, 1), mask)

    def reconstruct(self, x, mask):
        """x [B, T, V, 3], mask [B, T, V] -> predicted [B, T, V, 4]."""
        batch, frames, joints, _ = x.shape
        tokens = self.backbone.embed(x)  # [B, T, V, C]
        hidden = self.mask_token + self.backbone.spatial_pos  # the mask token keeps its joint's position
        features = self.backbone.encode(torch.where(mask[..., None], hidden, tokens))  # [B, T, V, C]
        y = self.decoder_embed(features) + self.decoder_spatial_pos + self.decoder_temporal_pos[:, :frames, None]
        for spatial, temporal in zip(self.decoder_spatial, self.decoder_temporal):
            y = spatial(y.flatten(0, 1))[0].unflatten(0, (batch, frames))  # over the joints of each frame
            y = temporal(y.transpose(1, 2).flatten(0, 1))[0].unflatten(0, (batch, joints)).transpose(1, 2)
        return self.predict(self.decoder_norm(y))  # [B, T, V, 4]
