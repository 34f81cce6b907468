"""Pretrain the action backbone by masked motion prediction on the training split's unlabelled clips;
writes backbone.bin for finetuning (backbone_ckpt) besides the usual checkpoints, or resumes a run (-r)."""
from lib.cli import build_parser, config_from_args, exit_process, run_main
from lib.engine.pretraining import MaskedMotionTask
from lib.engine.train import train
from lib.errors import UserError


def main(argv=None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    if not args.checkpoint:
        raise UserError("--checkpoint DIR is required: the folder for this run's checkpoints, logs and backbone.bin")
    if args.evaluate:
        raise UserError("pretrain_action.py does not evaluate; finetune from its backbone.bin with train_action.py")
    cfg = config_from_args(args)
    return train(MaskedMotionTask(cfg), cfg, args.checkpoint, args.resume)


if __name__ == "__main__":
    exit_process(run_main(main))
