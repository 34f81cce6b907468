"""The action model: the backbone on every person, a head over time, joints and persons.
[N, M, T, 17, 3] -> logits [N, K] (or an embedding [N, hidden_dim] with the `embed` head)."""
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from lib import skeleton
from lib.config import Config
from lib.model.backbone import BackboneConfig, SkeletonBackbone


def pool_features(features, dropout: nn.Dropout):
    """[N, M, T, V, C] -> [N, V*C]: dropout, mean over time, flatten joints, mean over persons
    (the zero-padded second person included, as published)."""
    return dropout(features).mean(dim=2).flatten(2).mean(dim=1)


class ClassificationHead(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, features):  # [N, M, T, V, C] -> [N, K]
        return self.fc2(self.relu(self.bn(self.fc1(pool_features(features, self.dropout)))))


class EmbeddingHead(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, hidden_dim)

    def forward(self, features):  # [N, M, T, V, C] -> unit vectors [N, hidden_dim]
        return F.normalize(self.fc(pool_features(features, self.dropout)), dim=-1)


class ActionNet(nn.Module):
    """`micro_batch` > 0 runs the backbone on that many clips at a time (see `backbone_features`)."""

    def __init__(self, backbone: SkeletonBackbone, head: nn.Module, micro_batch: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.micro_batch = micro_batch

    def forward(self, x, return_attention: bool = False):
        """x [N, M, T, V, Cin] -> [N, K]; with return_attention also the backbone's attention maps
        (their leading dimension folds N*M, person-major)."""
        n, m = x.shape[:2]
        if return_attention:
            features, maps = self.backbone(x.flatten(0, 1), return_attention=True)  # [N*M, T, V, C]
            return self.head(features.unflatten(0, (n, m))), maps
        return self.head(self.backbone_features(x.flatten(0, 1), m).unflatten(0, (n, m)))

    def backbone_features(self, sequences, persons: int):
        """[N*M, T, V, Cin] -> [N*M, T, V, C], `micro_batch` clips at a time when that is fewer than the
        batch. With gradients each chunk is checkpointed: its activations are dropped after the forward
        pass and recomputed (with the same random numbers) in the backward pass, so one chunk's activations
        are alive at a time. The result equals one pass over the whole batch; the head, with its
        BatchNorm, always sees the whole batch."""
        chunk = self.micro_batch * persons
        if not self.micro_batch or len(sequences) <= chunk:
            return self.backbone(sequences)
        if torch.is_grad_enabled():
            return torch.cat([checkpoint(self.backbone, part, use_reentrant=False) for part in sequences.split(chunk)])
        return torch.cat([self.backbone(part) for part in sequences.split(chunk)])


def backbone_config(cfg: Config) -> BackboneConfig:
    m = cfg.model
    return BackboneConfig(
        dim=m.dim_rep, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, max_frames=m.maxlen,
        drop_path_rate=m.drop_path_rate, with_hypergraph=m.version == 2, joint_label=tuple(cfg.hyper.joint_label[0]),
        joint_bias_init=m.hyper_relation_bias, j2j_adjacency=m.j2j_adjacency, j2e_layout=m.j2e_layout,
        j2e_main=m.j2e_main, j2e_bias=m.j2e_bias)


def build_model(cfg: Config, micro_batch: int = 0) -> ActionNet:
    m = cfg.model
    in_dim = skeleton.NUM_JOINTS * m.dim_rep
    if m.model_version == "class":
        head = ClassificationHead(in_dim, m.hidden_dim, cfg.data.action_classes, m.dropout_ratio)
    else:
        head = EmbeddingHead(in_dim, m.hidden_dim, m.dropout_ratio)
    return ActionNet(SkeletonBackbone(backbone_config(cfg)), head, micro_batch)
