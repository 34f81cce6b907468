"""Pretrain the action backbone by masked motion prediction on the training split's unlabelled clips;
writes backbone.bin for finetuning (backbone_ckpt) besides the usual checkpoints, or resumes a run (-r).
When the run ends, reconstruction.png shows what the model reconstructs on a few validation clips."""
from pathlib import Path

from lib.cli import build_parser, exit_process, run_main, training_run
from lib.engine.distributed import is_main_process
from lib.engine.pretraining import MaskedMotionTask
from lib.engine.train import train
from lib.vis.reconstruction import draw_reconstructions

PICTURE = "reconstruction.png"


def main(argv=None) -> int:
    cfg, out, resume = training_run(build_parser(__doc__, "pretrain").parse_args(argv))
    status = train(MaskedMotionTask(cfg), cfg, out, resume)
    if status == 0 and cfg.pretrain.picture_clips and is_main_process():
        draw_reconstructions(cfg, Path(out) / "latest_epoch.bin", Path(out) / PICTURE, clips=cfg.pretrain.picture_clips)
    return status


if __name__ == "__main__":
    exit_process(run_main(main))
