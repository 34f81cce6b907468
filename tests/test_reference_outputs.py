"""Outputs of small models saved from a known-good revision: any speed-up must keep them within 1e-5.
Regenerate (only after a deliberate change of the model's math) with
    REGENERATE_REFERENCE=1 python -m pytest tests/test_reference_outputs.py"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.config import Config
from lib.engine.build import action_model

REFERENCE = Path(__file__).parent / "data" / "model_reference.npz"
VARIANTS = {"v2_standard": (2, "standard"), "v2_reference": (2, "reference"), "v1": (1, "standard")}


def outputs(version: int, layout: str) -> dict[str, np.ndarray]:
    cfg = Config()
    cfg.model.dim_rep, cfg.model.depth, cfg.model.num_heads, cfg.model.hidden_dim = 32, 2, 4, 64
    cfg.model.maxlen = cfg.data.clip_len = 16
    cfg.model.version, cfg.model.j2e_layout = version, layout
    torch.manual_seed(0)
    model = action_model(cfg)
    with torch.no_grad():  # move the zero-initialised tensors so that every path matters
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(3, 2, 16, 17, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    logits, maps = model.eval()(x, return_attention=True)
    logits.sum().backward()
    # The maps of the last layer, for the first groups (a frame or a joint of a person each).
    result = {"logits": logits, "input_grad": x.grad, "joint_map": maps[-1]["joint"][:6],
              "temporal_map": maps[-1]["temporal"][:6]}
    if maps[-1]["hyperedge"] is not None:
        result["hyperedge_map"] = maps[-1]["hyperedge"][:6]
    return {name: value.detach().numpy() for name, value in result.items()}


def test_small_models_reproduce_the_saved_outputs():
    current = {f"{variant}/{name}": value for variant, settings in VARIANTS.items()
               for name, value in outputs(*settings).items()}
    if os.environ.get("REGENERATE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        np.savez_compressed(REFERENCE, **current)
        pytest.skip("reference outputs regenerated")
    saved = np.load(REFERENCE)
    assert sorted(saved.files) == sorted(current)
    for key, value in current.items():
        np.testing.assert_allclose(value, saved[key], rtol=0, atol=1e-5, err_msg=key)
