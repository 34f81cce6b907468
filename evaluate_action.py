"""Evaluate a checkpoint on the validation split of the config (1 clip, deterministic)."""
import sys

from lib.cli import build_parser, config_from_args, run_main
from lib.engine.evaluate import evaluate_checkpoint
from lib.errors import UserError


def main(argv=None):
    parser = build_parser(__doc__)
    parser.add_argument("--out-dir", default=None,
                        help="folder for metrics.json, per_class.csv, confusion.png, predictions.npz "
                             "(default: <checkpoint stem>_eval beside the checkpoint)")
    args = parser.parse_args(argv)
    if not args.evaluate:
        raise UserError("--evaluate CKPT is required: the checkpoint to evaluate")
    evaluate_checkpoint(config_from_args(args), args.evaluate, args.out_dir)


if __name__ == "__main__":
    sys.exit(run_main(main))
