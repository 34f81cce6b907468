"""The command line shared by the entry scripts: one parser, one way to build the config, one error exit."""
import argparse
import logging
import os
import sys
import traceback

from lib.config import Config, load_yaml_config
from lib.errors import PeerFailure, UserError


def build_parser(description: str) -> argparse.ArgumentParser:
    """The published flags of train_action.py, evaluate_action.py, vis_action_attn.py and
    deployment/deployment_action.py, plus our additions. Scripts add their own flags to the result."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="task YAML, e.g. configs/action/train_NTU60_xsub_small.yaml")
    p.add_argument("-c", "--checkpoint", default=None, help="output folder of a training run")
    p.add_argument("--hyper_cfg", default=None,
                   help="hypergraph YAML (joint labels), e.g. hyper_config/method2/manual_joint_label1.yaml; "
                        "default: manual_joint_label1")
    p.add_argument("--hyper_relation_bias", choices=["none", "uniform"], default=None,
                   help="initial joint-to-joint bias: skeleton adjacency (uniform) or identity (none)")
    p.add_argument("--version", type=int, choices=[1, 2], default=None,
                   help="2: full model with the hypergraph branch; 1: without it")
    p.add_argument("-r", "--resume", default=None,
                   help="checkpoint to resume training from, or 'auto': the output folder's latest_epoch.bin when "
                        "it exists, else a fresh start (for clusters: requeued jobs, torchrun --max-restarts)")
    p.add_argument("--evaluate", default=None, help="checkpoint to evaluate, visualise or export")
    p.add_argument("--deployment", default=None, help="output path of the ONNX model")
    p.add_argument("--backbone_ckpt", default=None, help="pretrained backbone for finetuning (overrides the YAML)")
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
        "train.backbone_ckpt": args.backbone_ckpt,
        "train.device": args.device,
        "train.seed": args.seed,
    }
    return load_yaml_config(args.config, args.hyper_cfg, flags, args.overrides)


def training_run(args: argparse.Namespace) -> tuple[Config, str, str]:
    """(config, output folder, checkpoint to resume or None) of a training command (train_action.py,
    pretrain_action.py), with its one-line errors."""
    if not args.checkpoint:
        raise UserError("--checkpoint DIR is required: the folder for this run's checkpoints and logs")
    if args.evaluate:
        raise UserError("training does not evaluate; use evaluate_action.py --evaluate CKPT")
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
