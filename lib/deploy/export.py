"""ONNX export of the action model, and its parity check against PyTorch with ONNX Runtime.

The graph is exported with PyTorch's TorchScript-based exporter (`dynamo=False`) at opset 17: it needs
no extra package (the dynamo exporter needs `onnxscript` and writes opset 18), and it exports the
fused attention with its additive float bias and dynamic batch and frame axes exactly (differences
around 1e-6). Input `pose2d` [N, 2, T, 17, 3] (x, y, confidence of the preprocessed clip), output
`action_label` [N, K] logits (`embedding` [N, D] for an embedding model, metadata task 'embed');
`layout='NTVC'` exports the single-person signature [N, T, 17, 3] of the
published documentation, the second person being zeros. The model's settings travel in the ONNX
metadata (class names, clip length, preprocessing options), so inference needs only the .onnx file.

Each attention is exported as one fused ONNX Runtime node (`lib.deploy.onnx_attention` swaps the
attention modules of a copy of the model at export time): `com.microsoft.Attention`, qkv projection
included, for the biased joint-to-joint attention, `com.microsoft.MultiHeadAttention` for the others.
ONNX Runtime has both on every execution provider; the rest of the graph is standard opset 17.
`quantize='int8'` then quantizes the Linear layers dynamically (`quantize_int8`).
"""
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lib.config import Config, config_to_dict
from lib.deploy.onnx_attention import runtime_attention

log = logging.getLogger(__name__)
OPSET = 17


class SinglePersonInput(nn.Module):
    """[N, T, V, C] -> the model's [N, 2, T, V, C] with an all-zero second person."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pose2d):
        return self.model(torch.stack([pose2d, torch.zeros_like(pose2d)], dim=1))


def export_onnx(model: nn.Module, cfg: Config, class_names: list[str], path, layout: str = "NMTVC",
                quantize: str = "none"):
    """Write the model (eval mode, CPU) to `path` with dynamic N and T, `quantize` 'none' or 'int8'.
    Returns the PyTorch module with the exported signature (the model itself, or wrapped for NTVC)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    signature = (SinglePersonInput(model) if layout == "NTVC" else model).eval()
    exported = runtime_attention(signature)
    frames = cfg.data.clip_len
    dummy = torch.randn(1, frames, 17, 3) if layout == "NTVC" else torch.randn(1, 2, frames, 17, 3)
    frame_axis = 1 if layout == "NTVC" else 2
    output = output_name(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            exported, (dummy,), str(path), input_names=["pose2d"], output_names=[output],
            opset_version=OPSET, custom_opsets={"com.microsoft": 1}, dynamo=False,
            dynamic_axes={"pose2d": {0: "batch", frame_axis: "frames"}, output: {0: "batch"}})
    if quantize == "int8":
        quantize_int8(path)
    write_metadata(path, cfg, class_names, layout, quantize)
    return signature


def output_name(cfg: Config) -> str:
    """The ONNX output: `action_label` logits [N, K], or `embedding` [N, D] of an embedding model."""
    return "embedding" if cfg.model.model_version == "embed" else "action_label"


def quantize_int8(path: Path):
    """Rewrite the model at `path` with dynamic int8 quantization of the Linear layers (every MatMul with a
    constant weight, and the qkv projection inside the joint-to-joint Attention nodes): int8 weights, one
    scale per output channel, activations quantized on the fly by ONNX Runtime (VNNI/AVX2 integer
    kernels). The attention products, LayerNorm, GELU and the residual sums stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name(path.stem + ".fp32.tmp.onnx")
    path.replace(fp32)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises, on the root logger, a pre-processing it does not need here
    try:
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                         per_channel=True)
    finally:
        root.setLevel(level)
        fp32.unlink()


def write_metadata(path: Path, cfg: Config, class_names: list[str], layout: str, quantization: str = "none"):
    import onnx

    model = onnx.load(str(path))
    metadata = {
        "class_names": json.dumps(class_names),
        "clip_len": str(cfg.data.clip_len),
        "max_frames": str(cfg.model.maxlen),
        "layout": layout,
        "quantization": quantization,
        "scale_range_test": json.dumps(cfg.data.scale_range_test),
        "legacy_conf_order": json.dumps(cfg.data.legacy_conf_order),
        "stream": cfg.data.stream,
        "task": cfg.model.model_version,
        "config": json.dumps(config_to_dict(cfg)),
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def parity(exported: nn.Module, session, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest absolute difference between ONNX Runtime and PyTorch outputs (logits or embeddings), per named
    input."""
    differences = {}
    output = session.get_outputs()[0].name
    with torch.no_grad():
        for name, x in inputs.items():
            expected = exported(torch.from_numpy(x)).numpy()
            actual = session.run([output], {"pose2d": x})[0]
            differences[name] = float(np.abs(actual - expected).max())
    return differences
