"""ONNX export with parity, and torch-free inference that matches evaluate_action.py."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.config import load_yaml_config
from lib.data import synthetic
from lib.deploy.inference import OnnxActionModel, window_starts
from lib.engine.build import action_model

ROOT = Path(__file__).resolve().parents[1]
SEED_FLAGS = ["--config", "configs/action/train_NTU60_xsub_small.yaml",
              "--hyper_cfg", "hyper_config/method2/manual_joint_label1.yaml", "--hyper_relation_bias", "uniform",
              "--version", "2"]


def run(script, *args, check=True):
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny synthetic pickle, a tiny trained-looking checkpoint and the --set flags that point at them."""
    tmp = tmp_path_factory.mktemp("deploy")
    data = synthetic.generate("demo", seed=3, num_samples=40)
    synthetic.write_pickle(data, tmp / "tiny.pkl")
    overrides = ["--set", f"data_root={tmp}", "--set", "dataset=tiny", "--set", "dim_rep=16", "--set", "depth=2",
                 "--set", "num_heads=2", "--set", "clip_len=12", "--set", "maxlen=12", "--set", "hidden_dim=32",
                 "--set", "num_workers=0", "--set", "device=cpu"]
    cfg = load_yaml_config(ROOT / SEED_FLAGS[1], ROOT / SEED_FLAGS[3],
                           overrides=[o for o in overrides if o != "--set"])
    torch.manual_seed(0)
    model = action_model(cfg)
    with torch.no_grad():  # non-trivial weights: the zero-initialised biases and BN statistics move
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.head.bn.running_mean.normal_(0, 0.1)
    torch.save({"model": model.state_dict()}, tmp / "model.bin")
    return {"tmp": tmp, "data": data, "overrides": overrides, "ckpt": tmp / "model.bin", "cfg": cfg}


def export(setup, name, *extra):
    out = setup["tmp"] / name
    result = run("deployment/deployment_action.py", *SEED_FLAGS, "--evaluate", setup["ckpt"], "--deployment", out,
                 *setup["overrides"], *extra)
    return out, result.stdout


def checkpoint_logits(setup, x: np.ndarray) -> np.ndarray:
    """PyTorch logits of the setup's checkpoint for the clips x [N, 2, T, 17, 3]."""
    torch_model = action_model(setup["cfg"]).eval()
    torch_model.load_state_dict(torch.load(setup["ckpt"], weights_only=True)["model"])
    with torch.no_grad():
        return torch_model(torch.from_numpy(x)).numpy()


def assert_input_dims(onnx_path, session, expected):
    """The exported input pose2d has the dimensions `expected`: an int where the size is fixed, None where it
    must be dynamic. Read from the ONNX graph (a symbol, dim_param, a size, dim_value, or neither: unknown)
    and from the ONNX Runtime session (a str, an int or None); named dynamic dimensions have distinct
    symbols, so they vary independently."""
    import onnx

    (graph_input,) = [i for i in onnx.load(str(onnx_path)).graph.input if i.name == "pose2d"]
    graph_dims = [getattr(d, d.WhichOneof("value")) if d.WhichOneof("value") else None
                  for d in graph_input.type.tensor_type.shape.dim]
    (session_input,) = session.get_inputs()
    assert session_input.name == "pose2d"
    for dims in (graph_dims, session_input.shape):
        assert len(dims) == len(expected), (dims, expected)
        for dim, size in zip(dims, expected):
            if size is None:
                assert dim is None or (isinstance(dim, str) and dim), (dims, expected)  # dynamic
            else:
                assert type(dim) is int and dim == size, (dims, expected)  # fixed
    symbols = [dim for dim, size in zip(graph_dims, expected) if size is None and dim is not None]
    assert len(set(symbols)) == len(symbols), graph_dims


def test_export_has_dynamic_batch_and_frames_and_parity(setup):
    out, stdout = export(setup, "model.onnx")
    model = OnnxActionModel(out)
    assert_input_dims(out, model.session, [None, 2, None, 17, 3])  # [N, 2, T, 17, 3], N and T dynamic
    (outp,) = model.session.get_outputs()
    assert outp.name == "action_label" and not isinstance(outp.shape[0], int) and outp.shape[1] == 60  # [N, 60]
    assert model.clip_len == 12 and len(model.class_names) == 60 and model.class_names[0] == "drink water"
    for fragment in ("random N=1 T=12", "random N=4 T=6", "validation N=4 T=12", "parity ok"):
        assert fragment in stdout
    differences = [float(line.split("=")[-1]) for line in stdout.splitlines() if "max |ONNX - PyTorch|" in line]
    assert len(differences) == 6 and max(differences) <= 1e-4
    # Independent check at another N and T than the export's dummy input.
    x = np.random.default_rng(1).uniform(-1, 1, (3, 2, 7, 17, 3)).astype(np.float32)
    expected = checkpoint_logits(setup, x)
    actual = model.session.run(["action_label"], {"pose2d": x})[0]
    assert np.abs(actual - expected).max() < 1e-4


@pytest.mark.parametrize("overrides", [[], ["j2e_layout=reference"], ["version=1"], ["j2e_main=false"],
                                       ["j2e_bias=false", "j2j_adjacency=false"]],
                         ids=["standard", "reference", "version1", "bias-only", "no-biases"])
def test_every_attention_exports_as_one_fused_node_with_parity(setup, overrides, tmp_path):
    """Each attention becomes one ONNX Runtime node (no Softmax left in the graph): Attention, with the
    qkv projection, for the biased joint-to-joint attention, MultiHeadAttention for the others; for every
    model variant, and the exported model matches PyTorch."""
    import onnx

    from lib.deploy.export import export_onnx

    cfg = load_yaml_config(ROOT / SEED_FLAGS[1], ROOT / SEED_FLAGS[3],
                           overrides=[o for o in setup["overrides"] if o != "--set"] + overrides)
    torch.manual_seed(0)
    model = action_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_onnx(model, cfg, [str(k) for k in range(60)], tmp_path / "m.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    per_depth = 3 if cfg.model.version == 2 else 2
    biased_joint_attention = cfg.model.depth if cfg.model.j2j_adjacency else 0
    assert ops.count("Attention") == biased_joint_attention and "Softmax" not in ops
    assert ops.count("MultiHeadAttention") == per_depth * cfg.model.depth - biased_joint_attention
    x = np.random.default_rng(2).uniform(-1, 1, (2, 2, 9, 17, 3)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    actual = OnnxActionModel(tmp_path / "m.onnx").session.run(["action_label"], {"pose2d": x})[0]
    assert np.abs(actual - expected).max() < 1e-5


def test_int8_export_quantizes_the_linear_layers_and_checks_agreement(setup):
    import onnx

    out, stdout = export(setup, "model_int8.onnx", "--quantize", "int8", "--min-agreement", "0")
    graph = onnx.load(str(out))
    ops = [node.op_type for node in graph.graph.node]
    constant = {init.name for init in graph.graph.initializer}
    float_linear = [n for n in graph.graph.node if n.op_type == "MatMul" and any(i in constant for i in n.input)]
    assert "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops
    assert not float_linear and "Attention" not in ops and ops.count("QAttention") == 2  # the j2j qkv projections
    assert ops.count("MultiHeadAttention") == 4  # temporal and joint-to-hyperedge attention: fp32
    assert {p.key: p.value for p in graph.metadata_props}["quantization"] == "int8"
    val_clips = len(setup["data"]["split"]["xsub_val"])
    assert re.search(rf"int8: top-1 class equal to PyTorch's on \d+ of {val_clips} validation clips", stdout)
    model = OnnxActionModel(out)
    x = np.random.default_rng(4).uniform(-1, 1, (3, 2, 12, 17, 3)).astype(np.float32)
    expected = checkpoint_logits(setup, x)
    actual = model.session.run(["action_label"], {"pose2d": x})[0]
    # quantized, yet the same model: int8 kernels differ between CPUs (VNNI or not), so no tight bound
    assert np.abs(actual - expected).max() > 0
    assert np.corrcoef(actual.ravel(), expected.ravel())[0, 1] > 0.95
    refused = run("deployment/deployment_action.py", *SEED_FLAGS, "--evaluate", setup["ckpt"], "--deployment",
                  setup["tmp"] / "refused.onnx", *setup["overrides"], "--quantize", "int8", "--min-agreement", "1.01",
                  check=False)
    assert refused.returncode == 2 and "nothing written: export without --quantize" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not list(setup["tmp"].glob("*refused*"))  # no refused model, no half-checked file
    assert out.exists()  # an earlier accepted export stays


def test_an_export_over_the_tolerance_writes_nothing_and_keeps_the_previous_model(setup):
    previous, _ = export(setup, "kept.onnx")
    before = previous.read_bytes()
    refused = run("deployment/deployment_action.py", *SEED_FLAGS, "--evaluate", setup["ckpt"], "--deployment",
                  previous, *setup["overrides"], "--tolerance", "-1", check=False)  # any difference is too large
    assert refused.returncode == 2 and refused.stderr.strip().endswith("> -1e+00; nothing written"), refused.stderr
    assert previous.read_bytes() == before
    assert sorted(p.name for p in setup["tmp"].glob("*kept*")) == ["kept.onnx"]


def test_ntvc_layout_is_single_person(setup):
    out, stdout = export(setup, "model_ntvc.onnx", "--layout", "NTVC")
    model = OnnxActionModel(out)
    assert_input_dims(out, model.session, [None, None, 17, 3])  # [N, T, 17, 3], N and T dynamic
    assert model.layout == "NTVC" and "parity ok" in stdout
    for n, t in ((2, 12), (3, 7)):  # the export's clip length, and another N and T
        x = np.random.default_rng(2).uniform(-1, 1, (n, t, 17, 3)).astype(np.float32)
        expected = checkpoint_logits(setup, np.stack([x, np.zeros_like(x)], axis=1))
        assert np.abs(model.session.run(None, {"pose2d": x})[0] - expected).max() < 1e-4


def test_infer_matches_evaluate_for_the_same_sample(setup):
    onnx_path, _ = export(setup, "model_eval.onnx")
    eval_dir = setup["tmp"] / "eval"
    run("evaluate_action.py", *SEED_FLAGS, "--evaluate", setup["ckpt"], "--out-dir", eval_dir, *setup["overrides"])
    predictions = np.load(eval_dir / "predictions.npz")
    for i in (0, len(predictions["frame_dir"]) - 1):
        frame_dir, logits = str(predictions["frame_dir"][i]), predictions["logits"][i]
        expected = np.exp(logits - logits.max())
        expected /= expected.sum()
        result = run("deployment/infer_action.py", "--onnx", onnx_path, "--pickle", setup["tmp"] / "tiny.pkl",
                     "--sample", frame_dir, "--json-out")
        out = json.loads(result.stdout)
        probabilities = np.array(out["predictions"][0]["probabilities"])
        assert out["predictions"][0]["top"][0]["label"] == int(expected.argmax())
        assert np.abs(probabilities - expected).max() < 1e-4
        assert out["label"] == int(predictions["label"][i])


def test_infer_runs_without_torch_and_reads_every_format(setup):
    onnx_path, _ = export(setup, "model_formats.onnx")
    ann = next(a for a in setup["data"]["annotations"] if a["keypoint"].shape[0] == 2)
    tmp = setup["tmp"]
    np.savez(tmp / "kp.npz", keypoint=ann["keypoint"], keypoint_score=ann["keypoint_score"])
    np.save(tmp / "kp.npy", np.concatenate([ann["keypoint"], ann["keypoint_score"][..., None]], axis=-1))
    coco_frames = [[{"keypoints": np.concatenate([ann["keypoint"][m, t], ann["keypoint_score"][m, t, :, None]],
                                                 axis=1).ravel().tolist()} for m in range(2)]
                   for t in range(ann["keypoint"].shape[1])]
    (tmp / "coco.json").write_text(json.dumps(coco_frames))
    mmpose_frames = [{"frame_id": t, "instances": [{"keypoints": ann["keypoint"][m, t].tolist(),
                                                    "keypoint_scores": ann["keypoint_score"][m, t].tolist()}
                                                   for m in range(2)]}
                     for t in range(ann["keypoint"].shape[1])]
    (tmp / "mmpose.json").write_text(json.dumps({"img_shape": [1080, 1920], "frames": mmpose_frames}))
    no_torch = "import sys; sys.modules['torch'] = None; import runpy; " \
               "sys.argv = ['deployment/infer_action.py'] + sys.argv[1:]; " \
               "runpy.run_path('deployment/infer_action.py', run_name='__main__')"
    outputs = {}
    for source in (["--pickle", tmp / "tiny.pkl", "--sample", ann["frame_dir"]], ["--keypoints", tmp / "kp.npz"],
                   ["--keypoints", tmp / "kp.npy"], ["--json", tmp / "coco.json"], ["--json", tmp / "mmpose.json"]):
        result = subprocess.run([sys.executable, "-c", no_torch, "--onnx", str(onnx_path), *map(str, source),
                                 "--json-out"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        outputs[str(source[1])] = np.array(json.loads(result.stdout)["predictions"][0]["probabilities"])
    first = next(iter(outputs.values()))
    for probabilities in outputs.values():  # the same keypoints in every format give the same answer
        assert np.abs(probabilities - first).max() < 1e-6


def test_windows_cover_long_sequences(setup):
    assert window_starts(100, 40, 30) == [0, 30, 60]
    assert window_starts(100, 40, 40) == [0, 40, 60]
    assert window_starts(30, 40, 10) == [0]
    onnx_path, _ = export(setup, "model_windows.onnx")
    ann = max(setup["data"]["annotations"], key=lambda a: a["keypoint"].shape[1])
    frames = ann["keypoint"].shape[1]
    result = run("deployment/infer_action.py", "--onnx", onnx_path, "--pickle", setup["tmp"] / "tiny.pkl",
                 "--sample", ann["frame_dir"], "--window", 20, "--stride", 10, "--json-out")
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["frames"] for p in predictions] == [[s, s + 20] for s in window_starts(frames, 20, 10)]
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in predictions)


@pytest.mark.parametrize("case, fragment", [
    ("missing onnx", "ONNX model not found"),
    ("unknown sample", "is not in"),
    ("bad npy shape", "expected [M, T, 17, 3]"),
    ("npz without scores", "lacks keypoint_score"),
    ("empty npz", "the file is empty"),
    ("truncated npz", "it is damaged, probably truncated"),
    ("not an array file", "it is no .npz or .npy file"),
    ("object array", "it holds Python objects, which are never loaded"),
    ("bad json", "not valid JSON"),
    ("json person without keypoints", "needs 'keypoints'"),
    ("json wrong keypoint count", "must be 51 numbers"),
])
def test_malformed_inputs_give_one_line_errors(setup, case, fragment, capsys, monkeypatch):
    """deployment/infer_action.py's main in this process, for speed (its `python` run is the same
    run_main, which turns a user error into one line on stderr and exit status 2); the first case also as
    a real process, without a traceback."""
    from video_helpers import load_script

    infer_action = load_script("deployment/infer_action.py")
    tmp = setup["tmp"]
    onnx_path = tmp / "model_errors.onnx"
    if not onnx_path.exists():
        export(setup, onnx_path.name)
    np.save(tmp / "bad.npy", np.zeros((5, 17, 2)))
    np.savez(tmp / "noscore.npz", keypoint=np.zeros((1, 5, 17, 2)))
    (tmp / "bad.json").write_text("[{")
    (tmp / "empty.npz").write_bytes(b"")
    np.savez(tmp / "whole.npz", keypoint=np.zeros((1, 5, 17, 2)), keypoint_score=np.ones((1, 5, 17)))
    (tmp / "truncated.npz").write_bytes((tmp / "whole.npz").read_bytes()[:-40])
    (tmp / "text.npy").write_text("x, y, score\n")
    np.save(tmp / "objects.npy", np.array([{"keypoint": 0}], dtype=object), allow_pickle=True)
    (tmp / "noperson.json").write_text(json.dumps([[{"box": [0, 0, 1, 1]}]]))
    (tmp / "short.json").write_text(json.dumps([[{"keypoints": [1, 2, 3]}]]))
    args = {
        "missing onnx": ["--onnx", tmp / "absent.onnx", "--keypoints", tmp / "bad.npy"],
        "unknown sample": ["--onnx", onnx_path, "--pickle", tmp / "tiny.pkl", "--sample", "S999C001P001R001A001"],
        "bad npy shape": ["--onnx", onnx_path, "--keypoints", tmp / "bad.npy"],
        "npz without scores": ["--onnx", onnx_path, "--keypoints", tmp / "noscore.npz"],
        "empty npz": ["--onnx", onnx_path, "--keypoints", tmp / "empty.npz"],
        "truncated npz": ["--onnx", onnx_path, "--keypoints", tmp / "truncated.npz"],
        "not an array file": ["--onnx", onnx_path, "--keypoints", tmp / "text.npy"],
        "object array": ["--onnx", onnx_path, "--keypoints", tmp / "objects.npy"],
        "bad json": ["--onnx", onnx_path, "--json", tmp / "bad.json"],
        "json person without keypoints": ["--onnx", onnx_path, "--json", tmp / "noperson.json"],
        "json wrong keypoint count": ["--onnx", onnx_path, "--json", tmp / "short.json"],
    }[case]
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    assert infer_action.run_main(infer_action.main, [str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert "allow_pickle" not in lines[0]  # numpy's advice for a file it does not know is never right here
    if case == "missing onnx":
        result = run("deployment/infer_action.py", *args, check=False)
        assert result.returncode == 2 and result.stderr.strip() == lines[0]


def test_export_refuses_a_checkpoint_of_another_model(setup):
    result = run("deployment/deployment_action.py", *SEED_FLAGS, "--evaluate", setup["ckpt"], "--deployment",
                 setup["tmp"] / "x.onnx", *setup["overrides"], "--set", "dim_rep=32", check=False)
    assert result.returncode == 2 and "does not fit this model" in result.stderr and "Traceback" not in result.stderr
