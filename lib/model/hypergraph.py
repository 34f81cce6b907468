"""The hypergraph over the 17 joints: each joint belongs to one hyperedge (a body part) given by
`joint_label`, and a hyperedge's feature is the mean of its member joints' features, mapped linearly."""
import torch
from torch import nn


def incidence_matrix(joint_label) -> torch.Tensor:
    """H [V, E] with H[v, e] = 1 when joint v belongs to hyperedge e. Labels must be 0..E-1, each used."""
    labels = torch.as_tensor(joint_label, dtype=torch.long)
    num_edges = int(labels.max()) + 1
    if labels.min() < 0 or torch.bincount(labels, minlength=num_edges).min() == 0:
        raise ValueError(f"joint labels must be 0..E-1 with every hyperedge non-empty, got {labels.tolist()}")
    return torch.nn.functional.one_hot(labels, num_edges).float()


class HyperedgeFeatures(nn.Module):
    """Joint features [B', V, C] -> the (linearly mapped) mean feature of each joint's hyperedge,
    broadcast back to the joints [B', V, C]. The incidence comes from the config, not the weights."""

    def __init__(self, dim: int, joint_label):
        super().__init__()
        incidence = incidence_matrix(joint_label)  # [V, E]
        self.register_buffer("member_mean", (incidence / incidence.sum(0)).T.contiguous(), persistent=False)  # [E, V]
        self.register_buffer("joint_label", torch.as_tensor(joint_label, dtype=torch.long), persistent=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        edges = self.proj(self.member_mean @ x)  # [B', E, C]
        return edges[:, self.joint_label]  # [B', V, C]
