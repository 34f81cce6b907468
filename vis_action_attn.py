"""Attention heat-maps of a checkpoint on validation samples of the config: PNGs (and with --attn-save the
raw maps) in {attn-dir}/{index:05d}_{frame_dir}/ for each sample."""
import sys

from lib.cli import build_parser, config_from_args, run_main
from lib.errors import UserError
from lib.vis.attention import VisOptions, visualise_attention


def main(argv=None):
    parser = build_parser(__doc__, "visualise")
    parser.add_argument("--samples", nargs="+", default=None, metavar="INDEX_OR_NAME",
                        help="validation-split sample indices and/or frame_dir names (default: the first sample)")
    parser.add_argument("--per-class", type=int, default=None, metavar="K",
                        help="the first K validation samples of every class present (not with --samples)")
    parser.add_argument("--attn-dir", default="vis_data", help="output folder (default: vis_data)")
    parser.add_argument("--attn-save", action="store_true",
                        help="also write the raw maps of each sample as attention.npz")
    parser.add_argument("--head", type=int, default=None, metavar="H", help="one head (default: the mean over heads)")
    parser.add_argument("--frame", type=int, default=None, metavar="F",
                        help="one frame for the spatial maps (default: the mean over frames)")
    parser.add_argument("--person", type=int, default=0, metavar="P", help="person slot 0 or 1 (default: 0)")
    args = parser.parse_args(argv)
    if not args.evaluate:
        raise UserError("--evaluate CKPT is required: the checkpoint whose attention to draw")
    options = VisOptions(samples=args.samples, per_class=args.per_class, attn_dir=args.attn_dir,
                         save_raw=args.attn_save, head=args.head, frame=args.frame, person=args.person)
    visualise_attention(config_from_args(args), args.evaluate, options)


if __name__ == "__main__":
    sys.exit(run_main(main))
