"""Pretrain the action backbone by masked motion prediction on the training split's unlabelled clips;
writes backbone.bin for finetuning (backbone_ckpt) besides the usual checkpoints, or resumes a run (-r)."""
from lib.cli import build_parser, exit_process, run_main, training_run
from lib.engine.pretraining import MaskedMotionTask
from lib.engine.train import train


def main(argv=None) -> int:
    cfg, out, resume = training_run(build_parser(__doc__).parse_args(argv))
    return train(MaskedMotionTask(cfg), cfg, out, resume)


if __name__ == "__main__":
    exit_process(run_main(main))
