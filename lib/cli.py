"""The command line shared by the entry scripts: one parser, one way to build the config, one error exit."""
import argparse
import logging
import os
import sys
import traceback

from lib.config import Config, load_yaml_config
from lib.errors import PeerFailure, UserError


# The checkpoint that each command reads with --evaluate (the published flag), for its help
CHECKPOINT_ROLES = {"evaluate": "checkpoint to evaluate", "visualise": "checkpoint whose attention to draw",
                    "reconstruct": "pretraining checkpoint whose reconstructions to draw",
                    "export": "checkpoint to export"}
COMMANDS = ("train", "pretrain", "summary", *CHECKPOINT_ROLES)


def build_parser(description: str, command: str) -> argparse.ArgumentParser:
    """The flags of one command: the published flags that build the config (all commands), plus what the
    command uses. train and pretrain: --checkpoint and -r (train also --backbone_ckpt); evaluate,
    visualise, reconstruct and export: --evaluate CKPT (export also --deployment); all but summary:
    --device. Scripts add their own flags to the result."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: one of {COMMANDS}")
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="task YAML, e.g. configs/action/train_NTU60_xsub_small.yaml")
    p.add_argument("--hyper_cfg", default=None,
                   help="hypergraph YAML (joint labels), e.g. hyper_config/method2/manual_joint_label1.yaml; "
                        "default: manual_joint_label1")
    p.add_argument("--hyper_relation_bias", choices=["none", "uniform"], default=None,
                   help="initial joint-to-joint bias: skeleton adjacency (uniform) or identity (none)")
    p.add_argument("--version", type=int, choices=[1, 2], default=None,
                   help="2: full model with the hypergraph branch; 1: without it")
    if command in ("train", "pretrain"):
        p.add_argument("-c", "--checkpoint", default=None, help="output folder of this run (checkpoints, logs)")
        p.add_argument("-r", "--resume", default=None,
                       help="checkpoint to resume training from, or 'auto': the output folder's latest_epoch.bin "
                            "when it exists, else a fresh start (for clusters: requeued jobs, torchrun --max-restarts)")
    if command == "train":
        p.add_argument("--backbone_ckpt", default=None,
                       help="pretrained backbone for finetuning (ft_* configs; overrides the YAML)")
    if command in CHECKPOINT_ROLES:
        p.add_argument("--evaluate", default=None, metavar="CKPT", help=CHECKPOINT_ROLES[command])
    if command == "export":
        p.add_argument("--deployment", default=None, metavar="OUT.onnx", help="output path of the ONNX model")
    if command != "summary":
        p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's, 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, value parsed as YAML; repeatable; dotted keys for sections, "
                        "e.g. --set epochs=10 --set data.clip_len=64")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    flags = {
        "model.version": args.version,
        "model.hyper_relation_bias": args.hyper_relation_bias,
        "train.backbone_ckpt": getattr(args, "backbone_ckpt", None),  # train_action.py only
        "train.device": getattr(args, "device", None),  # not in the summary
        "train.seed": args.seed,
    }
    return load_yaml_config(args.config, args.hyper_cfg, flags, args.overrides)


def training_run(args: argparse.Namespace) -> tuple[Config, str, str]:
    """(config, output folder, checkpoint to resume or None) of a training command (train_action.py,
    pretrain_action.py), with its one-line errors."""
    if not args.checkpoint:
        raise UserError("--checkpoint DIR is required: the folder for this run's checkpoints and logs")
    return config_from_args(args), args.checkpoint, args.resume


def run_main(main, argv=None) -> int:
    """Call `main(argv)` and return its exit status (`main` returns one, or None for 0); a UserError
    becomes one line on stderr and exit status 2, a PeerFailure one line and status 1. Under torchrun any
    other exception is printed with its traceback and becomes status 1 too, so that exit_process ends the
    process at once: a normal interpreter exit would first join the DataLoader workers, and a hung one
    would keep the failed process alive, unseen by torchrun."""
    try:
        return main(argv) or 0
    except UserError as e:
        print_error(e)
        return 2
    except PeerFailure as e:
        print_error(e)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        if not under_torchrun():
            raise
        traceback.print_exc()
        return 1


def print_error(e: Exception):
    """One line on stderr, in one write: torchrun's processes share an unbuffered stderr, and a line written in
    pieces (as print does) could interleave with another process's."""
    sys.stderr.write(f"error: {e}\n")
    sys.stderr.flush()


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_process(status: int):
    """Leave the process with `status`. Under torchrun (WORLD_SIZE > 1) flush and leave at once: returning
    normally after destroy_process_group() sometimes aborted one gloo rank at interpreter exit, a known
    PyTorch teardown problem, so torchrun reported a failure for a finished run."""
    if under_torchrun():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
