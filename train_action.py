"""Train the action model from scratch, finetune it (ft_* configs), or resume a run (-r)."""
import sys

from lib.cli import build_parser, config_from_args, run_main
from lib.engine.train import train
from lib.errors import UserError


def main(argv=None):
    args = build_parser(__doc__).parse_args(argv)
    if not args.checkpoint:
        raise UserError("--checkpoint DIR is required: the folder for this run's checkpoints and logs")
    if args.evaluate:
        raise UserError("train_action.py does not evaluate; use evaluate_action.py --evaluate CKPT")
    train(config_from_args(args), args.checkpoint, args.resume)


if __name__ == "__main__":
    sys.exit(run_main(main))
