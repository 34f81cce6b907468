"""Train the action model from scratch, finetune it (ft_* configs), or resume a run (-r)."""
from lib.cli import build_parser, exit_process, run_main, training_run
from lib.engine.classification import ClassificationTask
from lib.engine.train import train


def main(argv=None) -> int:
    cfg, out, resume = training_run(build_parser(__doc__).parse_args(argv))
    return train(ClassificationTask(cfg), cfg, out, resume)


if __name__ == "__main__":
    exit_process(run_main(main))
