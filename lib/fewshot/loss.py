"""The supervised contrastive loss (Khosla et al., 2020, the "L_out" form) on unit-length embeddings."""
import torch


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the anchors that have a positive (another clip of their class in the batch) of

        -1/|P(i)| * sum over p in P(i) of log( exp(z_i . z_p / t) / sum over a != i of exp(z_i . z_a / t) )

    embeddings [N, D] (unit length), labels [N]. A batch where no clip has a positive gives 0 (with a
    gradient graph, so the step still runs)."""
    logits = embeddings @ embeddings.T / temperature  # [N, N]
    self_pair = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(self_pair, float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)  # log softmax over a != i
    positive = (labels[:, None] == labels[None, :]) & ~self_pair  # [N, N]
    counts = positive.sum(dim=1)
    anchors = counts > 0
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1)[anchors] / counts[anchors]
    return per_anchor.mean() if anchors.any() else embeddings.sum() * 0.0
