"""The embedding task for the training loop (lib/engine/train.py; the members a task has are listed in
lib/engine/classification.py): an embedding model (model_version: embed) trained with the supervised
contrastive loss on batches of whole classes (lib/fewshot/sampler.py), and validated the one-shot way:
every validation clip takes the class of its most similar exemplar, one per class (the protocol's named
exemplars with data_split oneshot, else each class's first clip). Datasets, finetuning from backbone_ckpt,
partial_train, linear_probe and the parameter groups are the classification task's."""
import numpy as np

from lib.engine.classification import ClassificationTask
from lib.engine.evaluate import clip_embeddings, predict_split
from lib.fewshot.loss import supervised_contrastive_loss
from lib.fewshot.matching import exemplar_positions, one_shot_accuracy
from lib.fewshot.protocol import protocol_exemplars
from lib.fewshot.sampler import class_balanced_batches


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
