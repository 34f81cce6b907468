"""The action model: the backbone on every person, a classification head over time, joints and persons.
[N, M, T, 17, 3] -> logits [N, K]."""
import torch
from torch import nn

from lib import skeleton
from lib.model.backbone import BackboneConfig, SkeletonBackbone, in_chunks


class ClassificationHead(nn.Module):
    """Dropout, mean over time, flatten the joints, mean over persons (the zero-padded second person
    included, as published), then fc - BatchNorm - ReLU - fc."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, features):  # [N, M, T, V, C] -> [N, K]
        pooled = self.dropout(features).mean(dim=2).flatten(2).mean(dim=1)  # [N, V*C]
        return self.fc2(self.relu(self.bn(self.fc1(pooled))))


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
        if return_attention:
            features, maps = self.backbone(x.flatten(0, 1), return_attention=True)  # [N*M, T, V, C]
            return self.head(features.unflatten(0, (n, m))), maps
        features = in_chunks(self.backbone, self.micro_batch * m, x.flatten(0, 1))  # [N*M, T, V, C]
        return self.head(features.unflatten(0, (n, m)))

def build_model(num_classes: int, backbone: BackboneConfig, hidden_dim: int = 1024, dropout: float = 0.5) -> ActionNet:
    """The action model: `backbone` settings, then a head with `hidden_dim` units and `dropout` on its input."""
    head = ClassificationHead(skeleton.NUM_JOINTS * backbone.dim, hidden_dim, num_classes, dropout)
    return ActionNet(SkeletonBackbone(backbone), head)
