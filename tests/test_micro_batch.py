"""The backbone on micro-batches (train.micro_batch): the same logits and gradients as one pass over the
batch, checkpointed chunks that keep only their inputs, the same DropPath masks when a chunk is
recomputed, and the automatic size."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lib.config import Config, load_yaml_config
from lib.engine.runtime import micro_batch_size
from lib.engine.build import action_model

ROOT = Path(__file__).resolve().parents[1]
HYPER = ROOT / "hyper_config/method2/manual_joint_label1.yaml"


def small_config(drop_path=0.0) -> Config:
    cfg = Config()
    m = cfg.model
    m.dim_rep, m.num_heads, m.depth, m.maxlen, m.hidden_dim = 16, 2, 2, 10, 32
    m.drop_path_rate, m.dropout_ratio = drop_path, 0.0
    cfg.data.clip_len, cfg.data.action_classes = 10, 7
    return cfg


def twin_models(cfg: Config, micro_batch: int):
    """The same random weights, without and with micro-batches."""
    torch.manual_seed(0)
    whole = action_model(cfg)
    with torch.no_grad():
        for p in whole.parameters():
            p.add_(0.2 * torch.randn_like(p))
    chunked = action_model(cfg).set_micro_batch(micro_batch)
    chunked.load_state_dict(whole.state_dict())
    return whole, chunked


def loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("micro_batch", [1, 2, 4])
def test_micro_batches_give_the_logits_and_gradients_of_the_whole_batch(micro_batch):
    """In float64, so that the summation order of the weight gradients (chunk by chunk or all at once)
    cannot hide a real difference; in float32 they differ by rounding, about 1e-5."""
    whole, chunked = (model.double() for model in twin_models(small_config(), micro_batch))
    x = torch.randn(5, 2, 10, 17, 3, dtype=torch.float64)  # 5 clips: the last chunk is shorter
    y = torch.tensor([0, 3, 6, 1, 3])
    whole.train(), chunked.train()  # the head's BatchNorm normalises over the whole batch in both
    expected_logits, expected_grads = loss_and_grads(whole, x, y)
    logits, grads = loss_and_grads(chunked, x, y)
    assert torch.allclose(logits, expected_logits, atol=1e-12)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-12), name
    whole.float().eval(), chunked.float().eval()
    with torch.no_grad():
        assert torch.allclose(chunked(x.float()), whole(x.float()), atol=1e-5)


def saved_bytes(model, x) -> int:
    """Bytes the autograd graph of one forward pass keeps for the backward pass."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return total[0]


def test_checkpointed_chunks_keep_only_their_inputs_until_the_backward_pass():
    whole, chunked = twin_models(small_config(), micro_batch=1)
    x = torch.randn(4, 2, 10, 17, 3)
    kept_whole, kept_chunked = saved_bytes(whole.train(), x), saved_bytes(chunked.train(), x)
    assert kept_chunked < kept_whole / 10, (kept_chunked, kept_whole)


def test_recomputed_chunks_draw_the_same_drop_path_masks():
    """DropPath is random: the recomputation in the backward pass must use the forward pass's masks,
    or the gradients would belong to another network. Compared with the same chunks run without
    checkpointing, from the same seed."""
    cfg = small_config(drop_path=0.5)
    _, chunked = twin_models(cfg, micro_batch=1)
    chunked.train()
    x, y = torch.randn(3, 2, 10, 17, 3), torch.tensor([1, 2, 3])
    torch.manual_seed(7)
    logits, grads = loss_and_grads(chunked, x, y)

    chunked.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    features = torch.cat([chunked.backbone(part) for part in x.flatten(0, 1).split(2)])
    expected_logits = chunked.head(features.unflatten(0, (3, 2)), None)
    F.cross_entropy(expected_logits, y).backward()
    assert torch.allclose(logits, expected_logits.detach(), atol=1e-6)
    for name, p in chunked.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-6), name


def test_automatic_micro_batch_follows_the_measured_rule_on_the_cpu_only():
    """benchmarks/README.md: at the published size the whole batch trains fastest up to 7 clips (its
    model-width activation, 2 x 243 x 17 x 128 x 4 B a clip, stays under 32 MiB); from 8 clips, micro-batches
    of 2 (the most clips whose qkv output, 2 x 243 x 17 x 384 x 4 B a clip, stays under 32 MiB)."""
    hyper = HYPER
    published = ROOT / "configs/action/train_NTU60_xsub_small.yaml"
    demo = load_yaml_config(ROOT / "configs/action/demo_synthetic.yaml", hyper)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for batch, expected in ((1, 1), (4, 4), (7, 7), (8, 2), (16, 2)):
        cfg = load_yaml_config(published, hyper, overrides=[f"batch_size={batch}"])
        assert micro_batch_size(cfg, cpu) == expected, batch
        assert micro_batch_size(cfg, cuda) == 0
    assert micro_batch_size(demo, cpu) == demo.train.batch_size  # small clips: no chunks, no recomputation
    explicit = load_yaml_config(ROOT / "configs/action/demo_synthetic.yaml", hyper, overrides=["micro_batch=3"])
    assert micro_batch_size(explicit, cpu) == 3 and micro_batch_size(explicit, cuda) == 3


def test_pretraining_on_micro_batches_gives_the_predictions_and_gradients_of_the_whole_batch():
    """MaskedMotionModel.set_micro_batch: the same in-chunks pass as the action model's, over the
    backbone and the decoder together, with the mask split along with the clips."""
    from lib.engine.build import backbone_settings
    from lib.model.backbone import SkeletonBackbone
    from lib.model.masked_motion import MaskedMotionModel, motion_aware_mask

    torch.manual_seed(0)
    whole = MaskedMotionModel(SkeletonBackbone(backbone_settings(small_config())), 8, 1, 2).double()
    chunked = MaskedMotionModel(SkeletonBackbone(backbone_settings(small_config())), 8, 1, 2).double()
    chunked.load_state_dict(whole.state_dict())
    chunked.set_micro_batch(2)
    x = torch.randn(3, 2, 10, 17, 3, dtype=torch.float64)  # 3 clips of 2 persons: chunks of 4, 2 sequences
    mask = motion_aware_mask(x.flatten(0, 1), 0.8, 2, 0.8)
    outputs = []
    for model in (whole, chunked):
        model.zero_grad(set_to_none=True)
        predicted = model(x, mask)
        predicted.square().mean().backward()
        outputs.append((predicted.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (expected, expected_grads), (predicted, grads) = outputs
    assert torch.allclose(predicted, expected, atol=1e-12)
    for name, grad in grads.items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-12), name
    assert saved_bytes(lambda clips: chunked.float()(clips, mask), x.float()) < saved_bytes(
        lambda clips: whole.float()(clips, mask), x.float()) / 2
