"""Training: the loop behind train_action.py, from scratch, finetuning, or resuming.

Per epoch: train on a fresh shuffle (keyed by seed and epoch), validate, step the learning rate, log
(console, {checkpoint}/{log}.log, TensorBoard, metrics.jsonl) and save checkpoints. A resumed run ends
with the same weights as an uninterrupted one: the shuffle and the clips depend only on (seed, epoch),
and the checkpoint holds the model, optimizer, scheduler, RNG state and the position in the epoch.
SIGINT or SIGTERM saves latest_epoch.bin at the current batch and exits with 128 + the signal number.

Under torchrun every process trains on its share of each epoch's batches (batch_size per process) with
DistributedDataParallel; validation is split across the processes and gathered, so its metrics equal a
single-process evaluation; only rank 0 writes logs and checkpoints. On CUDA the forward pass runs under
bf16 autocast (train.amp), optionally compiled (train.compile).
"""
import json
import logging
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lib.config import Config, config_to_dict, save_config
from lib.data.dataset import build_datasets
from lib.engine.checkpoint import freeze_backbone_except, load_backbone_weights, match_state_dict, save_checkpoint
from lib.engine.evaluate import classification_metrics, eval_loader, ignore_interrupts, predict, topk_correct
from lib.engine.distributed import Distributed, exit_process, init_distributed
from lib.engine.runtime import keep_freed_memory, micro_batch_size, seed_everything, setup_logging
from lib.errors import UserError
from lib.model.action import build_model
from lib.model.convert_reference import load_checkpoint

log = logging.getLogger(__name__)


class StopSignal:
    """Records SIGINT / SIGTERM instead of dying, so the loop can save and stop at a batch boundary."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._record) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _record(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled training batches of an epoch (the last incomplete batch dropped)."""
    order = np.random.default_rng((seed, epoch)).permutation(num_samples)
    usable = num_samples // batch_size * batch_size
    return order[:usable].reshape(-1, batch_size).tolist()


def make_optimizer(model, cfg: Config):
    """AdamW with two groups: the backbone at lr_backbone and the head at lr_head (weight decay on all)."""
    groups = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": cfg.train.lr_backbone},
        {"params": [p for p in model.head.parameters() if p.requires_grad], "lr": cfg.train.lr_head},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg.train.lr_decay)
    return optimizer, scheduler


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def validate(model, val_set, cfg: Config, ctx: Distributed, amp: bool, max_batches=None) -> dict:
    """Metrics over the validation split, each process predicting its share; equal to one process."""
    positions = list(range(ctx.rank, len(val_set), ctx.world_size))
    share = torch.utils.data.Subset(val_set, positions) if ctx.enabled else val_set
    loader = eval_loader(share, cfg.train.batch_size, cfg.data.num_workers, ctx.device)
    with autocast(ctx.device, amp):
        scores, labels = predict(model, loader, ctx.device, max_batches=max_batches, flip=cfg.data.flip_test)
    parts = ctx.gather((positions[:len(labels)], scores, labels))
    order = np.argsort(np.concatenate([p for p, _, _ in parts]), kind="stable")
    return classification_metrics(torch.cat([s for _, s, _ in parts])[order], torch.cat([l for _, _, l in parts])[order])


def train(cfg: Config, checkpoint_dir, resume: str = None):
    ctx = init_distributed(cfg.train.device)
    device, out = ctx.device, Path(checkpoint_dir)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    setup_logging(out / f"{cfg.train.log}.log" if ctx.is_main else None, quiet=not ctx.is_main)
    seed_everything(cfg.train.seed + ctx.rank)  # dropout differs between processes; the data does not
    keep_freed_memory()

    train_set, val_set = build_datasets(cfg.data, seed=cfg.train.seed)
    if len(train_set) < cfg.train.batch_size * ctx.world_size:
        raise UserError(f"the training split has {len(train_set)} samples, fewer than batch_size "
                        f"{cfg.train.batch_size} x {ctx.world_size} processes; lower batch_size")

    micro_batch = micro_batch_size(cfg, device)
    model = build_model(cfg, micro_batch)
    if cfg.train.finetune and not resume:
        if not cfg.train.backbone_ckpt:
            raise UserError("finetuning needs a pretrained backbone: set backbone_ckpt in the config "
                            "or pass --backbone_ckpt PATH")
        report = load_backbone_weights(model, cfg.train.backbone_ckpt)
        log.info(f"backbone from {cfg.train.backbone_ckpt}: {report.summary()}")
    if cfg.train.partial_train:
        trainable = freeze_backbone_except(model, cfg.train.partial_train)
        log.info(f"partial_train: {len(trainable)} backbone tensors trainable, the rest frozen")
    model.to(device)
    optimizer, scheduler = make_optimizer(model, cfg)

    start_epoch, start_batch, best_acc, best_epoch = 0, 0, 0.0, 0
    meter = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
    if resume:
        state = load_checkpoint(resume)
        if "optimizer" not in state:
            raise UserError(f"{resume} holds weights only, not a training state; use it as backbone_ckpt "
                            "to finetune, or resume from latest_epoch.bin")
        report = match_state_dict(model.state_dict(), state["model"])
        if report.missing or report.unexpected or report.mismatched:
            raise UserError(f"{resume} does not fit this model ({report.summary()}); resume with the settings "
                            "the run was started with (its config.yaml)")
        model.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError:
            raise UserError(f"the optimizer state in {resume} has other parameter groups than this run: resume "
                            "with the partial_train the run was started with (its config.yaml)") from None
        scheduler.load_state_dict(state["scheduler"])
        by_rank = state["rng"]["by_rank"]
        rng = by_rank[ctx.rank] if len(by_rank) == ctx.world_size else by_rank[0]
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        start_epoch, start_batch = state["epoch"], state["next_batch"]
        best_acc, best_epoch = state["best_acc"], state["best_epoch"]
        if ctx.is_main:  # the saved meter already sums all processes
            meter = state["meter"]
        log.info(f"resumed from {resume}: epoch {start_epoch + 1}, batch {start_batch}, best top-1 {best_acc:.2f}")

    def training_state(epoch: int, next_batch: int, global_meter: dict) -> dict:
        """Gathered on every process (the RNG states of all ranks); saved by rank 0."""
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        by_rank = ctx.gather(rng)
        return {
            "epoch": epoch, "next_batch": next_batch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": dict(by_rank[0], by_rank=by_rank),
            "best_acc": best_acc, "best_epoch": best_epoch, "meter": global_meter, "config": config_to_dict(cfg),
        }

    def global_meter() -> dict:
        totals = ctx.sum([meter["loss"], meter["top1"], meter["top5"], meter["count"]])
        return {"loss": totals[0], "top1": int(totals[1]), "top5": int(totals[2]), "count": int(totals[3])}

    forward = ctx.wrap(model)
    if cfg.train.compile:
        forward = torch.compile(forward)
    amp = cfg.train.amp and device.type == "cuda"
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(f"{cfg.name}: {len(train_set)} training / {len(val_set)} validation clips, "
             f"{params:,} trainable parameters, device {device}"
             f"{f' x {ctx.world_size} processes' if ctx.enabled else ''}{', bf16 autocast' if amp else ''}"
             f"{f', backbone on {micro_batch} clips at a time' if 0 < micro_batch < cfg.train.batch_size else ''}, "
             f"output {out}")
    writer = SummaryWriter(out / "tensorboard") if ctx.is_main else None
    metrics_file = open(out / "metrics.jsonl", "a" if resume else "w") if ctx.is_main else None

    def stop_run(signum: int, message: str):
        if ctx.is_main:
            log.info(message)
            writer.close()
            metrics_file.close()
        exit_process(ctx, 128 + signum)

    with StopSignal() as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            started = time.perf_counter()
            train_set.set_epoch(epoch)
            batches = ctx.shard(epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, epoch))
            if cfg.train.quickdebug:
                batches = batches[:1]
            loader = torch.utils.data.DataLoader(
                train_set, batch_sampler=batches[start_batch:], num_workers=cfg.data.num_workers,
                pin_memory=device.type == "cuda", worker_init_fn=ignore_interrupts,
                generator=torch.Generator().manual_seed(cfg.train.seed))
            forward.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", initial=start_batch,
                       total=len(batches), dynamic_ncols=True, disable=not ctx.is_main)
            for batch_index, (x, y) in enumerate(bar, start=start_batch):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast(device, amp):
                    logits = forward(x).float()
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

                meter["loss"] += loss.item() * len(y)
                meter["top1"] += topk_correct(logits.detach(), y, 1)
                meter["top5"] += topk_correct(logits.detach(), y, 5)
                meter["count"] += len(y)
                bar.set_postfix(loss=f"{meter['loss'] / meter['count']:.4f}",
                                top1=f"{100 * meter['top1'] / meter['count']:.1f}",
                                lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if ctx.any(stop.signum is not None):
                    state = training_state(epoch, batch_index + 1, global_meter())
                    if ctx.is_main:
                        save_checkpoint(state, out / "latest_epoch.bin")
                    stop_run(stop.signum or signal.SIGTERM,
                             f"stopped by signal {stop.signum} in epoch {epoch + 1} after batch {batch_index + 1}; "
                             f"saved {out / 'latest_epoch.bin'}; continue with -r {out / 'latest_epoch.bin'}")
            bar.close()
            start_batch = 0

            ctx.broadcast_buffers(model)  # every process validates with rank 0's BatchNorm statistics
            val = validate(model, val_set, cfg, ctx, amp, max_batches=1 if cfg.train.quickdebug else None)
            lrs = scheduler.get_last_lr()
            scheduler.step()
            if best_epoch == 0 or val["top1"] > best_acc:
                best_acc, best_epoch = val["top1"], epoch + 1
            totals = global_meter()
            count = max(totals["count"], 1)
            record = {
                "epoch": epoch + 1, "train_loss": totals["loss"] / count, "train_top1": 100 * totals["top1"] / count,
                "train_top5": 100 * totals["top5"] / count, "val_loss": val["loss"], "val_top1": val["top1"],
                "val_top5": val["top5"], "val_mean_class_accuracy": val["mean_class_accuracy"],
                "lr_backbone": lrs[0], "lr_head": lrs[1], "best_top1": best_acc, "seconds": time.perf_counter() - started,
            }
            meter = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
            state = training_state(epoch + 1, 0, dict(meter))
            if ctx.is_main:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                for name in ("loss", "top1", "top5"):
                    writer.add_scalar(f"{name}/train", record[f"train_{name}"], epoch + 1)
                    writer.add_scalar(f"{name}/val", record[f"val_{name}"], epoch + 1)
                writer.add_scalar("lr/backbone", lrs[0], epoch + 1)
                writer.add_scalar("lr/head", lrs[1], epoch + 1)
                log.info(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} top-1 {record['train_top1']:.2f} | "
                         f"val loss {val['loss']:.4f} top-1 {val['top1']:.2f} top-5 {val['top5']:.2f} | "
                         f"best top-1 {best_acc:.2f} (epoch {best_epoch}) | lr {lrs[0]:.2e}/{lrs[1]:.2e} | "
                         f"{record['seconds']:.0f} s")
                save_checkpoint(state, out / "latest_epoch.bin")
                if (epoch + 1) % cfg.train.ckpt_save_frequency == 0:
                    save_checkpoint(state, out / f"epoch_{epoch + 1}.bin")
                if best_epoch == epoch + 1:
                    save_checkpoint(state, out / "best_epoch.bin")
            if ctx.any(stop.signum is not None):
                stop_run(stop.signum or signal.SIGTERM, f"stopped by signal {stop.signum} after epoch {epoch + 1}; "
                                                        f"continue with -r {out / 'latest_epoch.bin'}")
    if ctx.is_main:
        writer.close()
        metrics_file.close()
        log.info(f"done: best validation top-1 {best_acc:.2f} at epoch {best_epoch}; checkpoints in {out}")
    exit_process(ctx)
    return {"best_top1": best_acc, "best_epoch": best_epoch}
