"""Train the action model from scratch, finetune it (ft_* configs), or resume a run (-r)."""
from lib.cli import build_parser, config_from_args, exit_process, run_main
from lib.engine.classification import ClassificationTask
from lib.engine.train import train
from lib.errors import UserError


def main(argv=None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    if not args.checkpoint:
        raise UserError("--checkpoint DIR is required: the folder for this run's checkpoints and logs")
    if args.evaluate:
        raise UserError("train_action.py does not evaluate; use evaluate_action.py --evaluate CKPT")
    cfg = config_from_args(args)
    return train(ClassificationTask(cfg), cfg, args.checkpoint, args.resume)


if __name__ == "__main__":
    exit_process(run_main(main))
