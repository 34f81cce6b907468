"""The action model: the backbone on every person, then a head over time, joints and persons:
[N, M, T, 17, 3] -> logits [N, K] (ClassificationHead) or a unit-length embedding [N, D] (EmbeddingHead)."""
import torch
import torch.nn.functional as F
from torch import nn

from lib import skeleton
from lib.model.backbone import BackboneConfig, SkeletonBackbone, in_chunks


class ClassificationHead(nn.Module):
    """Dropout, mean over time, flatten the joints, mean over persons (the zero-padded second person
    included, as published: the `present` mask that the embedding head uses is not applied), then
    fc - BatchNorm - ReLU - fc."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, features, present):  # [N, M, T, V, C] -> [N, K]; `present` unused (see the class docstring)
        pooled = self.dropout(features).mean(dim=2).flatten(2).mean(dim=1)  # [N, V*C]
        return self.fc2(self.relu(self.bn(self.fc1(pooled))))


class EmbeddingHead(nn.Module):
    """Dropout, mean over time, flatten the joints, mean over the persons present (a person whose confidences
    are all zero, the padding of a one-person clip, is left out), then fc - BatchNorm - ReLU - fc and L2
    normalisation: a unit-length embedding, compared by cosine similarity. The BatchNorm removes what all
    clips share, so that even an untrained model's embeddings spread over the sphere."""

    def __init__(self, in_dim: int, hidden_dim: int, embed_dim: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, features, present):  # [N, M, T, V, C], present [N, M] -> [N, D]
        per_person = self.dropout(features).mean(dim=2).flatten(2)  # [N, M, V*C]
        weights = present.to(per_person.dtype)
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))  # nobody: all
        pooled = (per_person * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)  # [N, V*C]
        return F.normalize(self.fc2(self.relu(self.bn(self.fc1(pooled)))), dim=-1)


class ActionNet(nn.Module):
    def __init__(self, backbone: SkeletonBackbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.micro_batch = 0
        self.backbone_frozen = False

    def freeze_backbone(self):
        """Train the head only: the backbone's parameters get no gradient and the backbone stays in eval
        mode (no dropout or stochastic depth) whatever `train()` is called with (linear probing)."""
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def set_micro_batch(self, clips: int):
        """Run the backbone on `clips` clips at a time (0: the whole batch at once), checkpointed when
        gradients are on (see `in_chunks`). The result equals one pass over the whole batch; the head, with
        its BatchNorm, always sees the whole batch."""
        self.micro_batch = clips
        return self

    def forward(self, x, return_attention: bool = False):
        """x [N, M, T, V, Cin] -> [N, K]; with return_attention also the backbone's attention maps
        (their leading dimension folds N*M, person-major)."""
        n, m = x.shape[:2]
        # [N, M]: persons with any non-zero confidence (the padding person's x, y are moved off zero by the
        # crop scaling, its confidence, the last channel in every stream, stays 0)
        present = x[..., -1].flatten(2).abs().amax(dim=2) > 0
        if return_attention:
            features, maps = self.backbone(x.flatten(0, 1), return_attention=True)  # [N*M, T, V, C]
            return self.head(features.unflatten(0, (n, m)), present), maps
        features = in_chunks(self.backbone, self.micro_batch * m, x.flatten(0, 1))  # [N*M, T, V, C]
        return self.head(features.unflatten(0, (n, m)), present)


def build_model(num_classes: int, backbone: BackboneConfig, hidden_dim: int = 1024, dropout: float = 0.5,
                embed_dim: int = None) -> ActionNet:
    """The action model: `backbone` settings, then a head with `hidden_dim` units and `dropout` on its input:
    a classification head over `num_classes`, or with `embed_dim` an embedding head of that size."""
    in_dim = skeleton.NUM_JOINTS * backbone.dim
    head = (EmbeddingHead(in_dim, hidden_dim, embed_dim, dropout) if embed_dim else
            ClassificationHead(in_dim, hidden_dim, num_classes, dropout))
    return ActionNet(SkeletonBackbone(backbone), head)
