"""Train the action model from scratch, finetune it (ft_* configs), or resume a run (-r); an embedding model
(model_version: embed, configs/oneshot/) trains the same way."""
from lib.cli import build_parser, exit_process, run_main, training_run
from lib.engine.build import with_backbone_of
from lib.engine.classification import ClassificationTask
from lib.engine.embedding import EmbeddingTask
from lib.engine.train import train


def main(argv=None) -> int:
    cfg, out, resume = training_run(build_parser(__doc__, "train").parse_args(argv))
    note = ""
    if cfg.train.finetune and cfg.train.backbone_ckpt:
        cfg, note = with_backbone_of(cfg, cfg.train.backbone_ckpt)
    task = EmbeddingTask(cfg) if cfg.model.model_version == "embed" else ClassificationTask(cfg)
    return train(task, cfg, out, resume, notes=(note,) if note else ())


if __name__ == "__main__":
    exit_process(run_main(main))
