"""The masked-motion pretraining task for the training loop (lib/engine/train.py; the members a task
has are listed in lib/engine/classification.py). It reads only the training split of the config's
protocol, as unlabelled clips made exactly as for training, and never the validation split. Besides
the loop's checkpoints it writes backbone.bin: the backbone's weights with the settings they need,
which finetuning (`backbone_ckpt`) loads."""
import dataclasses
import logging
from pathlib import Path

import torch

from lib.config import Config
from lib.data.dataset import ActionDataset, open_store
from lib.engine.build import backbone_settings
from lib.engine.checkpoint import save_checkpoint
from lib.engine.runtime import micro_batch_size
from lib.engine.train import shuffled_batches
from lib.errors import UserError
from lib.model.backbone import SkeletonBackbone
from lib.model.masked_motion import MaskedMotionModel, motion_aware_mask, pretraining_loss

log = logging.getLogger(__name__)
BACKBONE_FILE = "backbone.bin"


class UnlabelledClips(torch.utils.data.Dataset):
    """The clips of a dataset without their labels."""

    def __init__(self, dataset: ActionDataset):
        self.dataset = dataset

    def set_epoch(self, epoch: int):
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset.clip(i)


def backbone_file(backbone: SkeletonBackbone) -> dict:
    """What backbone.bin holds: the weights and the settings that rebuild the backbone they fit."""
    return {"backbone": backbone.state_dict(), "backbone_config": dataclasses.asdict(backbone.cfg)}


class MaskedMotionTask:
    best_metric = "loss"

    def __init__(self, cfg: Config):
        p = cfg.pretrain
        if cfg.data.clip_len % p.segment:
            raise UserError(f"pretrain.segment ({p.segment}) must divide data.clip_len ({cfg.data.clip_len}): "
                            "a token is one joint over a segment of frames")
        if p.decoder_dim % p.decoder_heads:
            raise UserError(f"pretrain.decoder_dim ({p.decoder_dim}) must be divisible by pretrain.decoder_heads "
                            f"({p.decoder_heads})")
        self.cfg = cfg

    @staticmethod
    def better(score: float, best: float) -> bool:
        return score < best

    def datasets(self):
        """(the whole training split's unlabelled clips, None): no validation split."""
        data = dataclasses.replace(self.cfg.data, label_fraction=1.0)
        train_set = ActionDataset(open_store(data), data, train=True, seed=self.cfg.train.seed)
        return UnlabelledClips(train_set), None

    def epoch_batches(self, train_set, epoch: int) -> list[list[int]]:
        return shuffled_batches(len(train_set), self.cfg.train.batch_size, self.cfg.train.seed, epoch)

    def build_model(self, device: torch.device, pretrained: bool) -> MaskedMotionModel:
        p = self.cfg.pretrain
        model = MaskedMotionModel(SkeletonBackbone(backbone_settings(self.cfg)), p.decoder_dim, p.decoder_depth,
                                  p.decoder_heads)
        return model.set_micro_batch(micro_batch_size(self.cfg, device))

    def parameter_groups(self, model: MaskedMotionModel) -> list[dict]:
        """The backbone at lr_backbone; the mask token and the decoder at lr_head."""
        backbone = {id(p) for p in model.backbone.parameters()}
        return [
            {"name": "backbone", "params": list(model.backbone.parameters()), "lr": self.cfg.train.lr_backbone},
            {"name": "decoder", "params": [p for p in model.parameters() if id(p) not in backbone],
             "lr": self.cfg.train.lr_head},
        ]

    def training_step(self, forward, clips, device):
        p = self.cfg.pretrain
        x = clips.to(device, non_blocking=True)
        sequences = x.flatten(0, 1)  # [N*M, T, V, 3]
        mask = motion_aware_mask(sequences, p.mask_ratio, p.segment, p.tau)
        return pretraining_loss(forward(x, mask).float(), sequences, mask, p.segment)

    @staticmethod
    def summarize(sums: dict) -> dict:
        """loss = position_loss + motion_loss, each the mean over its entries of the epoch so far."""
        terms = {f"{term}_loss": sums.get(f"{term}_loss", 0.0) / max(sums.get(f"{term}_entries", 0), 1)
                 for term in ("position", "motion")}
        return {"loss": terms["position_loss"] + terms["motion_loss"], **terms}

    @staticmethod
    def save_artifacts(model: MaskedMotionModel, out: Path):
        save_checkpoint(backbone_file(model.backbone), Path(out) / BACKBONE_FILE)
