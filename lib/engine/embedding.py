"""The embedding task for the training loop (lib/engine/train.py; the members a task has are listed in
lib/engine/classification.py): an embedding model (model_version: embed) trained with the supervised
contrastive loss (Khosla et al., 2020, the "L_out" form) on batches of whole classes, and validated the
one-shot way: every validation clip takes the class of its most similar exemplar, one per class (the
protocol's named exemplars with data_split oneshot, else each class's first clip). Datasets, finetuning
from backbone_ckpt, partial_train, linear_probe and the parameter groups are the classification task's."""
import numpy as np
import torch

from lib.data.oneshot import protocol_exemplars
from lib.engine.classification import ClassificationTask
from lib.engine.evaluate import clip_embeddings, predict_split
from lib.engine.matching import exemplar_positions, one_shot_accuracy


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


def class_balanced_batches(labels: np.ndarray, batch_size: int, clips_per_class: int, seed: int,
                           epoch: int) -> list[list[int]]:
    """The batches of an epoch (positions into `labels`), drawn from a generator keyed by (seed, epoch).

    Each class's samples are shuffled and cut into groups of `clips_per_class` (a class with fewer samples
    repeats them to fill one group; the rest that does not fill a group waits for another epoch). A batch
    takes one group from each of batch_size / clips_per_class different classes, drawn with probability
    proportional to their groups left, until fewer classes than that have groups left. Every sample
    appears at most once per epoch (except in a repeated small class), so consecutive shards of the
    batches (one per process) are disjoint."""
    rng = np.random.default_rng((seed, epoch, 11))
    classes_per_batch = batch_size // clips_per_class
    groups = {}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < clips_per_class:
            members = np.resize(members, clips_per_class)
        usable = len(members) // clips_per_class * clips_per_class
        groups[int(c)] = list(members[:usable].reshape(-1, clips_per_class))
    batches = []
    while True:
        available = [c for c, left in groups.items() if left]
        if len(available) < classes_per_batch:
            return batches
        weights = np.array([len(groups[c]) for c in available], dtype=np.float64)
        chosen = rng.choice(available, size=classes_per_batch, replace=False, p=weights / weights.sum())
        batches.append([int(i) for c in chosen for i in groups[int(c)].pop()])


def split_exemplars(cfg, labels: np.ndarray, frame_dirs) -> dict:
    """{class: position} of the exemplars of a split: the named ones of the one-shot protocol (data_split
    oneshot), else the first clip of each class."""
    named = protocol_exemplars(frame_dirs) if cfg.data.data_split == "oneshot" else set()
    return exemplar_positions(labels, frame_dirs, named)


class EmbeddingTask(ClassificationTask):
    def epoch_batches(self, train_set, epoch: int) -> list[list[int]]:
        return class_balanced_batches(train_set.labels, self.cfg.train.batch_size, self.cfg.fewshot.clips_per_class,
                                      self.cfg.train.seed, epoch)

    def training_step(self, forward, batch, device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        embeddings = forward(x).float()  # [N, D], unit length
        loss = supervised_contrastive_loss(embeddings, y, self.cfg.fewshot.temperature)
        with_positives = int(((y[:, None] == y[None, :]).sum(dim=1) > 1).sum())
        return loss, {"loss": loss.item() * with_positives, "anchors": with_positives}

    @staticmethod
    def summarize(sums: dict) -> dict:
        return {"loss": sums.get("loss", 0.0) / max(sums.get("anchors", 0), 1)}

    def validate(self, model, val_set, ctx, amp: bool, max_batches=None) -> dict:
        embeddings, labels, covered = predict_split(model, val_set, self.cfg, ctx, amp, max_batches,
                                                    outputs=clip_embeddings)
        labels = labels.numpy()
        exemplars = split_exemplars(self.cfg, labels, val_set.frame_dirs[covered])
        result = one_shot_accuracy(embeddings.numpy(), labels, exemplars)
        return {"top1": result["top1"], "mean_class_accuracy": result["mean_class_accuracy"]}
