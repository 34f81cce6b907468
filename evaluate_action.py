"""Evaluate a checkpoint on the validation split of the config (deterministic), or fuse saved scores. An
embedding model (model_version: embed) is evaluated the one-shot way, and --gallery evaluates a gallery."""
import sys

from lib.cli import build_parser, config_from_args, run_main
from lib.engine.evaluate import ensemble, evaluate_checkpoint
from lib.errors import UserError
from lib.fewshot.evaluate import evaluate_embedding, evaluate_gallery


def main(argv=None):
    parser = build_parser(__doc__, "evaluate")
    parser.add_argument("--out-dir", default=None,
                        help="folder for metrics.json, per_class.csv, confusion.png, predictions.npz "
                             "(default: <checkpoint stem>_eval beside the checkpoint)")
    parser.add_argument("--save-scores", default=None, metavar="PATH",
                        help="also write the per-sample class probabilities (.npz) to PATH, for --ensemble")
    parser.add_argument("--ensemble", nargs="+", default=None, metavar="SCORES",
                        help="fuse the --save-scores files of several evaluations instead of evaluating")
    parser.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per --ensemble file")
    parser.add_argument("--gallery", default=None, metavar="GALLERY",
                        help="evaluate a gallery of python -m lib.fewshot.gallery on the config's labelled split "
                             "(with the checkpoint it was built with, or --evaluate CKPT)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="with --gallery: the 'unknown' similarity threshold (default: the gallery's suggestion)")
    parser.add_argument("--confusion-all-classes", action="store_true",
                        help="confusion.png with every class of the label map (default: the classes present)")
    args = parser.parse_args(argv)
    if args.weights and not args.ensemble:
        raise UserError("--weights goes with --ensemble")
    if args.threshold is not None and not args.gallery:
        raise UserError("--threshold goes with --gallery")
    cfg = config_from_args(args)
    if args.gallery:
        evaluate_gallery(cfg, args.gallery, args.evaluate, args.out_dir, args.threshold)
        return
    if args.ensemble:
        ensemble(cfg, args.ensemble, args.weights, args.out_dir or "ensemble_eval")
        return
    if not args.evaluate:
        raise UserError("--evaluate CKPT is required: the checkpoint to evaluate (or --ensemble SCORES...)")
    if cfg.model.model_version == "embed":
        evaluate_embedding(cfg, args.evaluate, args.out_dir)
        return
    evaluate_checkpoint(cfg, args.evaluate, args.out_dir, args.save_scores, args.confusion_all_classes)


if __name__ == "__main__":
    sys.exit(run_main(main))
