"""Export a checkpoint to ONNX for CPU deployment and check the ONNX model against PyTorch.

Input `pose2d` [N, 2, T, 17, 3] (or [N, T, 17, 3] with --layout NTVC), N and T dynamic; output
`action_label` [N, K] logits (`embedding` [N, D] for an embedding model). The check runs ONNX Runtime and PyTorch on random and real validation
clips, batch 1 and 4, full and shorter T, prints the largest difference and fails above --tolerance.
With --quantize int8 (dynamic int8 Linear layers, faster on the CPU) the differences are only printed;
the check is then the top-1 agreement with PyTorch on up to --check-clips validation clips, which must
reach --min-agreement.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib.cli import build_parser, config_from_args, run_main  # noqa: E402
from lib.deploy.export import OPSET, export_onnx, parity  # noqa: E402
from lib.deploy.inference import OnnxActionModel  # noqa: E402
from lib.engine.build import load_trained  # noqa: E402
from lib.engine.runtime import setup_logging  # noqa: E402
from lib.errors import UserError  # noqa: E402


def parity_inputs(cfg, layout: str, real_clips: np.ndarray) -> dict[str, np.ndarray]:
    """Random and real inputs at batch 1 and 4, full and shorter clip length."""
    rng = np.random.default_rng(0)
    frames, short = cfg.data.clip_len, max(1, cfg.data.clip_len // 2)
    inputs = {
        f"random N=1 T={frames}": rng.uniform(-1, 1, (1, 2, frames, 17, 3)),
        f"random N=4 T={frames}": rng.uniform(-1, 1, (4, 2, frames, 17, 3)),
        f"random N=4 T={short}": rng.uniform(-1, 1, (4, 2, short, 17, 3)),
        f"validation N=1 T={frames}": real_clips[:1],
        f"validation N={len(real_clips)} T={frames}": real_clips,
        f"validation N={len(real_clips)} T={short}": real_clips[:, :, ::2][:, :, :short],
    }
    inputs = {name: x.astype(np.float32) for name, x in inputs.items()}
    return {name: x[:, 0].copy() for name, x in inputs.items()} if layout == "NTVC" else inputs


EMBEDDING_AGREEMENT = 0.99  # least cosine similarity of the int8 and PyTorch embeddings that counts as agreeing


def agreement(exported, session, clips: np.ndarray, batch: int = 16) -> int:
    """How many clips ONNX Runtime and PyTorch agree on: the same top-1 class, or for an embedding model
    embeddings with cosine similarity at least EMBEDDING_AGREEMENT."""
    same = 0
    output = session.get_outputs()[0].name
    for start in range(0, len(clips), batch):
        x = clips[start:start + batch]
        expected = exported(torch.from_numpy(x)).numpy()
        actual = session.run([output], {"pose2d": x})[0]
        if output == "embedding":
            same += int((np.sum(expected * actual, axis=1) >= EMBEDDING_AGREEMENT).sum())
        else:
            same += int((actual.argmax(1) == expected.argmax(1)).sum())
    return same


def main(argv=None):
    parser = build_parser(__doc__.splitlines()[0], "export")
    parser.add_argument("--layout", choices=["NMTVC", "NTVC"], default="NMTVC",
                        help="NMTVC: pose2d [N, 2, T, 17, 3] (default); NTVC: one person, [N, T, 17, 3]")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |ONNX - PyTorch| (fp32)")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: dynamic int8 quantization of the Linear layers")
    parser.add_argument("--check-clips", type=int, default=256, help="validation clips of the int8 agreement check")
    parser.add_argument("--min-agreement", type=float, default=0.95,
                        help="least share of validation clips whose int8 top-1 class equals PyTorch's")
    args = parser.parse_args(argv)
    if not args.evaluate or not args.deployment:
        raise UserError("--evaluate CKPT and --deployment OUT.onnx are both required")
    setup_logging()
    cfg = config_from_args(args)
    target = Path(args.deployment)
    staging = target.with_name(f".{target.name}.unchecked")  # renamed to the target once it passed the checks
    try:
        export_and_check(args, cfg, staging)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    print(f"wrote {target}")


def export_and_check(args, cfg, path: Path):
    """Export to `path` and check the ONNX model against PyTorch; a model that fails the check is a
    UserError (and the caller removes `path`: a refused export leaves no file behind)."""
    trained = load_trained(cfg, args.evaluate, single_clip=True)  # the exported model sees one clip at a time
    val, cfg = trained.val_set, trained.cfg
    exported = export_onnx(trained.model, cfg, trained.class_names, path, args.layout, args.quantize)
    onnx_model = OnnxActionModel(path)
    inputs = onnx_model.session.get_inputs()[0]
    print(f"exported (opset {OPSET}{', int8 Linear layers' if args.quantize == 'int8' else ''}): "
          f"input {inputs.name} {inputs.shape}, output {onnx_model.session.get_outputs()[0].name} "
          f"{onnx_model.session.get_outputs()[0].shape}")

    real = np.stack([val[i][0] for i in range(min(4, len(val)))])
    differences = parity(exported, onnx_model.session, parity_inputs(cfg, args.layout, real))
    for name, difference in differences.items():
        print(f"  {name:<28} max |ONNX - PyTorch| = {difference:.2e}")
    worst = max(differences.values())
    if args.quantize == "int8":
        clips = np.stack([val[i][0] for i in range(min(args.check_clips, len(val)))])
        if args.layout == "NTVC":
            clips = clips[:, 0].copy()
        same = agreement(exported, onnx_model.session, clips)
        rule = ("embedding cosine >= " f"{EMBEDDING_AGREEMENT}" if onnx_model.task == "embed"
                else "top-1 class equal to PyTorch's")
        print(f"int8: {rule} on {same} of {len(clips)} validation clips ({100 * same / len(clips):.1f}%)")
        if same < args.min_agreement * len(clips):
            raise UserError(f"the int8 model agrees with PyTorch on {same}/{len(clips)} validation clips, fewer "
                            f"than --min-agreement {args.min_agreement}; nothing written: export without --quantize")
        return
    if worst > args.tolerance:
        raise UserError(f"the ONNX model differs from PyTorch by {worst:.2e} > {args.tolerance:.0e}; nothing written")
    print(f"parity ok: largest difference {worst:.2e} <= {args.tolerance:.0e}")


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(run_main(main))
