"""The training loop shared by every task: from scratch, finetuning, or resuming.

A task (lib/engine/classification.py, ...) supplies the datasets, the model, its parameter groups, the
loss of a batch and the validation metrics; this loop does the rest, the same for every task. Per epoch:
train on a fresh shuffle (keyed by seed and epoch), validate, step the learning rate, log (console,
{checkpoint}/{log}.log, TensorBoard, metrics.jsonl) and save checkpoints. A resumed run ends with the
same weights as an uninterrupted one: the shuffle and the clips depend only on (seed, epoch), and the
checkpoint holds the model, optimizer, scheduler, RNG states and the position in the epoch.
latest_epoch.bin is written at the end of every epoch and every train.ckpt_every_minutes within one; SIGINT or
SIGTERM saves it at the current batch and ends the run with status 128 + the signal number. `-r auto`
resumes from it when it exists (else starts fresh), so the same command continues a run after a crash,
a preemption or a torchrun restart (--max-restarts).

Under torchrun every process trains on its share of each epoch's batches (batch_size per process) with
DistributedDataParallel; validation is split across the processes and gathered, so its metrics equal a
single-process evaluation; only rank 0 writes logs and checkpoints. On CUDA the forward pass runs under
bf16 autocast (train.amp) and, with train.compile auto, compiled for training and for validation
(lib/engine/compiled.py); the epoch's log line says how many graphs were compiled so far.
"""
import json
import logging
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lib.config import Config, config_to_dict, save_config
from lib.engine.checkpoint import load_checkpoint, match_state_dict, save_checkpoint
from lib.engine.compiled import compile_enabled, compiled_graphs, maybe_compiled
from lib.engine.distributed import Distributed, init_distributed, shutdown, torchrun_restart
from lib.engine.runtime import autocast, data_loader, keep_freed_memory, loader_workers, seed_everything, setup_logging
from lib.errors import UserError

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

    def exit_status(self) -> int:
        """128 + the signal, as a shell reports a process the signal ended (SIGTERM when the signal came to
        another process of the run)."""
        return 128 + (self.signum or signal.SIGTERM)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclass
class Progress:
    """Where the run stands: the epoch and batch to do next, the best validation result so far, and the
    sums of the task's training statistics over the epoch so far (all processes)."""
    epoch: int = 0
    next_batch: int = 0
    best_score: float = 0.0
    best_epoch: int = 0
    sums: dict = field(default_factory=dict)


def shuffled_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The shuffled training batches of an epoch (the last incomplete batch dropped): the batches of the
    classification and pretraining tasks."""
    order = np.random.default_rng((seed, epoch)).permutation(num_samples)
    usable = num_samples // batch_size * batch_size
    return order[:usable].reshape(-1, batch_size).tolist()


def make_optimizer(groups: list[dict], cfg: Config):
    """AdamW over the task's parameter groups (weight decay on all), the learning rate decayed every epoch."""
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=cfg.train.lr_decay)
    return optimizer, scheduler


def restore_state(path, model, optimizer, scheduler, ctx: Distributed) -> Progress:
    """Load a training checkpoint into the model, optimizer, scheduler and this process's RNG; return the
    progress to continue from. Anything that does not fit the run is a one-line error."""
    state = load_checkpoint(path)
    if "optimizer" not in state:
        raise UserError(f"{path} holds weights only, not a training state; use it as backbone_ckpt "
                        "to finetune, or resume from latest_epoch.bin")
    report = match_state_dict(model.state_dict(), state["model"])
    if report.missing or report.unexpected or report.mismatched:
        raise UserError(f"{path} does not fit this model ({report.summary()}); resume with the settings "
                        "the run was started with (its config.yaml)")
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError:
        raise UserError(f"the optimizer state in {path} has other parameter groups than this run: resume "
                        "with the partial_train the run was started with (its config.yaml)") from None
    scheduler.load_state_dict(state["scheduler"])
    by_rank = state["rng"]["by_rank"]
    rng = by_rank[ctx.rank] if len(by_rank) == ctx.world_size else by_rank[0]
    torch.set_rng_state(rng["torch"])
    if ctx.device.type == "cuda" and rng["cuda"] is not None:
        torch.cuda.set_rng_state(rng["cuda"], ctx.device)
    if "progress" in state:
        progress = Progress(**state["progress"])
    else:  # a checkpoint of an earlier version of this toolkit
        progress = Progress(state["epoch"], state["next_batch"], state["best_acc"], state["best_epoch"], state["meter"])
    if not ctx.is_main:  # the saved sums already add up all processes; rank 0 carries them
        progress.sums = {}
    log.info(f"resumed from {path}: epoch {progress.epoch + 1}, batch {progress.next_batch}, "
             f"best {progress.best_score:.2f}{restart_note()}")
    return progress


def restart_note() -> str:
    restart, most = torchrun_restart()
    return f" (torchrun restart {restart} of at most {most})" if restart else ""


# Settings that may change when a run is continued with -r auto: they do not change what a step computes.
RESUMABLE_CHANGES = {"train.epochs", "train.ckpt_save_frequency", "train.ckpt_every_minutes",
                     "train.dist_timeout_minutes", "train.log", "train.device", "train.amp", "train.compile",
                     "train.micro_batch", "train.quickdebug", "data.num_workers", "data.data_root",
                     "data.kpfiles"}


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_run(saved: dict, cfg: Config, path: Path):
    """-r auto continues the run in the output folder only: a latest_epoch.bin saved with other settings
    (besides RESUMABLE_CHANGES) is a one-line error naming the first that differs."""
    theirs, ours = flatten(saved), flatten(config_to_dict(cfg))
    for key in sorted(set(theirs) | set(ours)):
        if key not in RESUMABLE_CHANGES and theirs.get(key) != ours.get(key):
            raise UserError(f"{path} belongs to a run with {key} = {theirs.get(key)!r}, but this command has "
                            f"{key} = {ours.get(key)!r}: continue it with the settings of its config.yaml, or "
                            "give this run another --checkpoint folder")


def resolve_resume(resume: str, out: Path, cfg: Config, ctx: Distributed):
    """The checkpoint to resume from: `resume` as given, or for 'auto' {out}/latest_epoch.bin when rank 0
    finds it (checked against the run's settings), else None for a fresh start; the same on every process."""
    if resume != "auto":
        return resume
    latest = out / "latest_epoch.bin"
    if not ctx.from_main(latest.is_file() if ctx.is_main else None):
        log.info(f"-r auto: no {latest} yet; starting fresh{restart_note()}")
        return None
    saved = load_checkpoint(latest).get("config")
    if saved is not None:  # checkpoints of earlier versions hold no config
        check_same_run(saved, cfg, latest)
    return latest


def training_state(model, optimizer, scheduler, progress: Progress, cfg: Config, ctx: Distributed) -> dict:
    """Everything an exact resume needs. Called on every process (it gathers the RNG states of all
    ranks, and the sums of the statistics); saved by rank 0."""
    device = ctx.device
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    by_rank = ctx.gather(rng)
    saved = asdict(progress)
    saved["sums"] = ctx.sum_dict(progress.sums)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": dict(by_rank[0], by_rank=by_rank), "progress": saved, "epoch": progress.epoch,
            "config": config_to_dict(cfg)}


class Checkpoints:
    """The checkpoint policy. At the end of an epoch: latest_epoch.bin, epoch_{N}.bin every
    train.ckpt_save_frequency epochs, best_epoch.bin when the epoch is the best so far. Within an epoch:
    latest_epoch.bin when a stop signal came, and every train.ckpt_every_minutes (rank 0's clock decides;
    `save_latest` is called on every process, since the state gathers from all). Each file is written
    atomically (lib.engine.checkpoint.save_checkpoint); rank 0 writes."""

    def __init__(self, out: Path, model, optimizer, scheduler, cfg: Config, ctx: Distributed):
        self.out, self.cfg, self.ctx = out, cfg, ctx
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.latest = out / "latest_epoch.bin"
        self.saved_at = time.monotonic()

    def due(self) -> bool:
        """On rank 0: whether ckpt_every_minutes have passed since the last save (always False elsewhere)."""
        minutes = self.cfg.train.ckpt_every_minutes
        return self.ctx.is_main and minutes > 0 and time.monotonic() - self.saved_at >= 60 * minutes

    def _state(self, progress: Progress) -> dict:
        self.saved_at = time.monotonic()
        return training_state(self.model, self.optimizer, self.scheduler, progress, self.cfg, self.ctx)

    def save_latest(self, progress: Progress):
        state = self._state(progress)
        if self.ctx.is_main:
            save_checkpoint(state, self.latest)

    def save_epoch(self, progress: Progress, is_best: bool):
        state = self._state(progress)
        if self.ctx.is_main:
            save_checkpoint(state, self.latest)
            if progress.epoch % self.cfg.train.ckpt_save_frequency == 0:
                save_checkpoint(state, self.out / f"epoch_{progress.epoch}.bin")
            if is_best:
                save_checkpoint(state, self.out / "best_epoch.bin")


class RunLogger:
    """The run's records on rank 0: one line per epoch on the console and in the log file, TensorBoard
    curves, metrics.jsonl. A run resumed after `epochs_done` epochs (None: a fresh run) keeps the records of
    those epochs and drops later ones (written before a crash that came ahead of the epoch's checkpoint), in
    metrics.jsonl and in TensorBoard. Other processes log nothing."""

    def __init__(self, out: Path, epochs_done: int | None, enabled: bool, best_metric: str):
        self.enabled, self.best_metric = enabled, best_metric
        if enabled:
            path = out / "metrics.jsonl"
            resumed = epochs_done is not None and path.exists()
            kept = [line for line in (path.read_text().splitlines() if resumed else [])
                    if json.loads(line)["epoch"] <= epochs_done]
            self.writer = SummaryWriter(out / "tensorboard", purge_step=None if epochs_done is None else epochs_done + 1)
            self.metrics = open(path, "w")
            self.metrics.writelines(line + "\n" for line in kept)

    def epoch(self, record: dict, train: dict, val: dict, lrs: dict):
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        step = record["epoch"]
        for split, metrics in (("train", train), ("val", val)):
            for name, value in metrics.items():
                self.writer.add_scalar(f"{name}/{split}", value, step)
        for name, value in lrs.items():
            self.writer.add_scalar(f"lr/{name}", value, step)
        validation = f" | val {format_metrics(val)}" if val else ""
        compiled = f" | {record['compiled_graphs']} graphs compiled so far" if "compiled_graphs" in record else ""
        log.info(f"epoch {step}: train {format_metrics(train)}{validation} | "
                 f"best {self.best_metric} {record[f'best_{self.best_metric}']:.2f} (epoch {record['best_epoch']}) | "
                 f"lr {'/'.join(f'{v:.2e}' for v in lrs.values())} | {record['seconds']:.0f} s"
                 f"{compiled}")

    def close(self):
        if self.enabled:
            self.writer.close()
            self.metrics.close()


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{name} {value:.4f}" if name == "loss" else f"{name} {value:.2f}" for name, value in metrics.items())


def add_sums(total: dict, batch: dict) -> dict:
    return {key: total.get(key, 0) + value for key, value in batch.items()}


def train_one_epoch(task, forward, optimizer, train_set, progress: Progress, cfg: Config, ctx: Distributed,
                    stop: StopSignal, checkpoints: Checkpoints, amp: bool) -> bool:
    """Train on this process's share of the epoch's batches from `progress.next_batch` on, updating
    `progress` after each batch and saving latest_epoch.bin when it is due. Returns False when a stop signal
    came (checked after every batch, on every process in the same collective operation)."""
    epoch, start = progress.epoch, progress.next_batch
    train_set.set_epoch(epoch)
    batches = ctx.shard(task.epoch_batches(train_set, epoch))
    if cfg.train.quickdebug:
        batches = batches[:1]
    loader = data_loader(train_set, ctx.device, loader_workers(cfg, ctx.device), batch_sampler=batches[start:],
                         generator=torch.Generator().manual_seed(cfg.train.seed))
    forward.train()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", initial=start, total=len(batches),
               dynamic_ncols=True, disable=not ctx.is_main)
    for batch_index, batch in enumerate(bar, start=start):
        with ctx.training_step():
            with autocast(ctx.device, amp):
                loss, sums = task.training_step(forward, batch, ctx.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        progress.sums = add_sums(progress.sums, sums)
        progress.next_batch = batch_index + 1
        bar.set_postfix(**{k: f"{v:.4g}" for k, v in task.summarize(progress.sums).items()},
                        lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        stopping, saving = ctx.any(stop.signum is not None, checkpoints.due())
        if stopping:
            bar.update(progress.next_batch - bar.n)  # count the batch just done, as the stop message does
            bar.close()
            return False
        if saving:
            checkpoints.save_latest(progress)
            log.info(f"saved {checkpoints.latest} at epoch {epoch + 1}, batch {progress.next_batch} "
                     f"(every {cfg.train.ckpt_every_minutes:g} min)")
    bar.close()
    return True


def train(task, cfg: Config, checkpoint_dir, resume: str = None, notes: tuple[str, ...] = ()) -> int:
    """Run `task` as configured; outputs in `checkpoint_dir`; `resume`: a checkpoint, or 'auto' for
    {checkpoint_dir}/latest_epoch.bin when it exists; `notes`: lines about how the config was resolved, for
    the run's log. Returns the exit status: 0 when every epoch ran, 128 + the signal number when SIGINT /
    SIGTERM stopped it (after saving latest_epoch.bin)."""
    ctx = init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    out = Path(checkpoint_dir)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    setup_logging(out / f"{cfg.train.log}.log" if ctx.is_main else None, quiet=not ctx.is_main)
    for note in notes:
        log.info(note)
    resume = resolve_resume(resume, out, cfg, ctx)
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.train.seed + ctx.rank)  # dropout differs between processes; the data does not
    keep_freed_memory()

    train_set, val_set = task.datasets()
    if len(train_set) < cfg.train.batch_size * ctx.world_size:
        raise UserError(f"the training split has {len(train_set)} samples, fewer than batch_size "
                        f"{cfg.train.batch_size} x {ctx.world_size} processes; lower batch_size")
    model = task.build_model(ctx.device, pretrained=not resume)
    model.to(ctx.device)
    optimizer, scheduler = make_optimizer(task.parameter_groups(model), cfg)
    progress = restore_state(resume, model, optimizer, scheduler, ctx) if resume else Progress()

    forward = maybe_compiled(ctx.wrap(model), cfg.train.compile, ctx.device)
    validation_forward = maybe_compiled(model, cfg.train.compile, ctx.device)
    compiling = compile_enabled(cfg.train.compile, ctx.device)
    amp = cfg.train.amp and ctx.device.type == "cuda"
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(f"{cfg.name}: {len(train_set)} training / {len(val_set) if val_set is not None else 0} validation clips, "
             f"{params:,} trainable "
             f"parameters, device {ctx.device}{f' x {ctx.world_size} processes' if ctx.enabled else ''}"
             f"{', bf16 autocast' if amp else ''}{', compiled' if compiling else ''}, output {out}")
    logger = RunLogger(out, epochs_done=progress.epoch if resume else None, enabled=ctx.is_main,
                       best_metric=task.best_metric)
    checkpoints = Checkpoints(out, model, optimizer, scheduler, cfg, ctx)
    status = 0
    with StopSignal() as stop:
        while progress.epoch < cfg.train.epochs:
            started = time.perf_counter()
            ctx.phase = f"training, epoch {progress.epoch + 1}"
            if not train_one_epoch(task, forward, optimizer, train_set, progress, cfg, ctx, stop, checkpoints, amp):
                checkpoints.save_latest(progress)
                status = stop.exit_status()
                log.info(f"stopped by signal {status - 128} in epoch {progress.epoch + 1} after batch "
                         f"{progress.next_batch}; saved {checkpoints.latest}; continue with -r auto "
                         f"(exit status {status})")
                break

            ctx.phase = f"validation, epoch {progress.epoch + 1}"
            ctx.broadcast_buffers(model)  # every process validates with rank 0's BatchNorm statistics
            val = ({} if val_set is None else  # a task without a validation split picks the best by training
                   task.validate(validation_forward, val_set, ctx, amp, max_batches=1 if cfg.train.quickdebug else None))
            lrs = {group.get("name", str(i)): lr for i, (group, lr) in
                   enumerate(zip(optimizer.param_groups, scheduler.get_last_lr()))}
            scheduler.step()
            epoch = progress.epoch + 1
            train_metrics = task.summarize(ctx.sum_dict(progress.sums))
            score = (val or train_metrics)[task.best_metric]
            is_best = progress.best_epoch == 0 or task.better(score, progress.best_score)
            if is_best:
                progress.best_score, progress.best_epoch = score, epoch
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in train_metrics.items()},
                      **{f"val_{k}": v for k, v in val.items()}, **{f"lr_{k}": v for k, v in lrs.items()},
                      f"best_{task.best_metric}": progress.best_score, "best_epoch": progress.best_epoch,
                      "seconds": time.perf_counter() - started}
            if compiling:
                record["compiled_graphs"] = compiled_graphs()
            progress.epoch, progress.next_batch, progress.sums = epoch, 0, {}
            ctx.phase = f"checkpoint, epoch {epoch}"
            logger.epoch(record, train_metrics, val, lrs)
            checkpoints.save_epoch(progress, is_best)
            if ctx.is_main:
                task.save_artifacts(model, out)
            if ctx.any(stop.signum is not None)[0]:
                status = stop.exit_status()
                log.info(f"stopped by signal {status - 128} after epoch {epoch}; saved {checkpoints.latest}; continue "
                         f"with -r auto (exit status {status})")
                break
    logger.close()
    if status == 0:
        split = "validation" if val_set is not None else "training"
        log.info(f"done: best {split} {task.best_metric} {progress.best_score:.2f} at epoch "
                 f"{progress.best_epoch}; checkpoints in {out}")
    shutdown(ctx)
    return status
