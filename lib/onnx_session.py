"""An ONNX Runtime session on the CPU for a user's model file, with one-line errors: the action and
embedding models that deployment/deployment_action.py exports, and the YOLO pose models of the video
path."""
from pathlib import Path

from lib.errors import UserError


def open_session(path, threads: int = None):
    """An `onnxruntime.InferenceSession` for `path` with every graph optimisation and the CPU provider."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"cannot load ONNX model {path}: {' '.join(str(e).split())[:200]}") from None
