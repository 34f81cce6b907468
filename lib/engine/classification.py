"""The action-classification task for the training loop (lib/engine/train.py): the config's datasets and
action model (finetuned from a pretrained backbone with train.finetune), cross-entropy on the labels,
top-1 / top-5 while training, and the validation metrics of evaluate_action.py.

A task is any object with these members; the loop needs nothing else:
  best_metric, better(a, b)       the validation metric that picks best_epoch.bin, and its order
  datasets()                      (train, val); the training set has set_epoch(epoch)
  epoch_batches(train_set, epoch) the epoch's training batches (lists of positions), before sharding
  build_model(device, pretrained) the model (pretrained: load what the config asks to start from)
  parameter_groups(model)         the optimizer's parameter groups, each with a 'name' and an 'lr'
  training_step(forward, batch, device) -> (loss, sums)   sums: numbers that add up over batches
  summarize(sums) -> metrics      the training metrics of summed statistics
  validate(model, val_set, ctx, amp, max_batches) -> metrics   (not called when datasets() gives no val)
  save_artifacts(model, out)      after each epoch's checkpoints, on rank 0: files of the task's own
"""
import logging

import torch
import torch.nn.functional as F

from lib.config import Config
from lib.data.dataset import build_datasets
from lib.engine.build import action_model
from lib.engine.checkpoint import freeze_backbone_except, load_backbone_weights
from lib.engine.distributed import Distributed
from lib.engine.evaluate import classification_metrics, predict_split, topk_correct
from lib.engine.runtime import micro_batch_size
from lib.engine.train import shuffled_batches
from lib.errors import UserError

log = logging.getLogger(__name__)


class ClassificationTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.best_metric = cfg.train.best_metric

    @staticmethod
    def better(score: float, best: float) -> bool:
        return score > best

    def datasets(self):
        return build_datasets(self.cfg.data, seed=self.cfg.train.seed)

    def epoch_batches(self, train_set, epoch: int) -> list[list[int]]:
        return shuffled_batches(len(train_set), self.cfg.train.batch_size, self.cfg.train.seed, epoch)

    def build_model(self, device: torch.device, pretrained: bool):
        cfg = self.cfg.train
        model = action_model(self.cfg)
        if cfg.finetune and pretrained:
            if not cfg.backbone_ckpt:
                raise UserError("finetuning needs a pretrained backbone: set backbone_ckpt in the config "
                                "or pass --backbone_ckpt PATH")
            report = load_backbone_weights(model, cfg.backbone_ckpt)
            log.info(f"backbone from {cfg.backbone_ckpt}: {report.summary()}")
        if cfg.partial_train:
            trainable = freeze_backbone_except(model, cfg.partial_train)
            log.info(f"partial_train: {len(trainable)} backbone tensors trainable, the rest frozen")
        if cfg.linear_probe:
            model.freeze_backbone()
            log.info("linear_probe: the backbone is frozen (eval mode); only the head trains")
        return model.set_micro_batch(micro_batch_size(self.cfg, device))

    def parameter_groups(self, model) -> list[dict]:
        """The backbone at lr_backbone (an empty group when it is frozen) and the head at lr_head."""
        return [
            {"name": "backbone", "params": [p for p in model.backbone.parameters() if p.requires_grad],
             "lr": self.cfg.train.lr_backbone},
            {"name": "head", "params": [p for p in model.head.parameters() if p.requires_grad],
             "lr": self.cfg.train.lr_head},
        ]

    @staticmethod
    def training_step(forward, batch, device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        logits = forward(x).float()
        loss = F.cross_entropy(logits, y)
        logits = logits.detach()
        sums = {"loss": loss.item() * len(y), "top1": topk_correct(logits, y, 1), "top5": topk_correct(logits, y, 5),
                "count": len(y)}
        return loss, sums

    @staticmethod
    def summarize(sums: dict) -> dict:
        count = max(sums.get("count", 0), 1)
        return {"loss": sums.get("loss", 0.0) / count, "top1": 100 * sums.get("top1", 0) / count,
                "top5": 100 * sums.get("top5", 0) / count}

    def validate(self, model, val_set, ctx: Distributed, amp: bool, max_batches=None) -> dict:
        """Metrics over the validation split, each process predicting its share; equal to one process."""
        scores, labels, _ = predict_split(model, val_set, self.cfg, ctx, amp, max_batches)
        metrics = classification_metrics(scores, labels)
        return {k: metrics[k] for k in ("loss", "top1", "top5", "mean_class_accuracy")}

    @staticmethod
    def save_artifacts(model, out):
        """Classification writes nothing beyond the loop's checkpoints."""
