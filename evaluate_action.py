"""Evaluate a checkpoint on the validation split of the config (deterministic), or fuse saved scores."""
import sys

from lib.cli import build_parser, config_from_args, run_main
from lib.engine.evaluate import ensemble, evaluate_checkpoint
from lib.errors import UserError


def main(argv=None):
    parser = build_parser(__doc__)
    parser.add_argument("--out-dir", default=None,
                        help="folder for metrics.json, per_class.csv, confusion.png, predictions.npz "
                             "(default: <checkpoint stem>_eval beside the checkpoint)")
    parser.add_argument("--save-scores", default=None, metavar="PATH",
                        help="also write the per-sample class probabilities (.npz) to PATH, for --ensemble")
    parser.add_argument("--ensemble", nargs="+", default=None, metavar="SCORES",
                        help="fuse the --save-scores files of several evaluations instead of evaluating")
    parser.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per --ensemble file")
    parser.add_argument("--confusion-all-classes", action="store_true",
                        help="confusion.png with every class of the label map (default: the classes present)")
    args = parser.parse_args(argv)
    if args.weights and not args.ensemble:
        raise UserError("--weights goes with --ensemble")
    cfg = config_from_args(args)
    if args.ensemble:
        ensemble(cfg, args.ensemble, args.weights, args.out_dir or "ensemble_eval")
        return
    if not args.evaluate:
        raise UserError("--evaluate CKPT is required: the checkpoint to evaluate (or --ensemble SCORES...)")
    evaluate_checkpoint(cfg, args.evaluate, args.out_dir, args.save_scores, args.confusion_all_classes)


if __name__ == "__main__":
    sys.exit(run_main(main))
