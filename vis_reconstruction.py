"""What a pretraining checkpoint reconstructs on validation clips of the config: the input with its hidden
joints removed, the predicted positions and moves of the hidden joints, and the truth, side by side (PNG)."""
import sys

from lib.cli import build_parser, config_from_args, run_main
from lib.engine.runtime import setup_logging
from lib.errors import UserError
from lib.vis.reconstruction import draw_reconstructions


def main(argv=None):
    parser = build_parser(__doc__, "reconstruct")
    parser.add_argument("--samples", nargs="+", default=None, metavar="INDEX_OR_NAME",
                        help="validation-split sample indices and/or frame_dir names (default: the first --clips)")
    parser.add_argument("--clips", type=int, default=3, help="how many clips without --samples (default: 3)")
    parser.add_argument("--mask-seed", type=int, default=0, help="seed of the hidden tokens (default: 0)")
    parser.add_argument("--out", default="reconstruction.png", help="PNG file (default: reconstruction.png)")
    args = parser.parse_args(argv)
    if not args.evaluate:
        raise UserError("--evaluate CKPT is required: the pretraining checkpoint (e.g. RUN/latest_epoch.bin)")
    setup_logging()
    draw_reconstructions(config_from_args(args), args.evaluate, args.out, args.samples, args.clips, args.mask_seed)


if __name__ == "__main__":
    sys.exit(run_main(main))
