"""The state-dict names of the published checkpoints (EHGFormer / MixSTE2) mapped onto ours.

Maps the published names (with or without DataParallel's `module.`) onto ours, drops what we derive
from the config (joint labels, incidence matrix, merge weight) and the unused pose-regression head,
and infers the model settings from the tensor shapes. Converted weights load into our model built with
`j2e_layout: reference` (the published joint-to-hyperedge head split).
"""
import re

# (published pattern, our replacement), applied in order to the name after any `module.` prefix.
RENAMES = (
    (r"(^|\.)Spatial_patch_to_embedding\.", r"\1joint_embed."),
    (r"(^|\.)Spatial_pos_embed$", r"\1spatial_pos"),
    (r"(^|\.)Temporal_pos_embed$", r"\1temporal_pos"),
    (r"(^|\.)STEblocks\.(\d+)\.common_attn_blk\.attn\.outer$", r"\1spatial_blocks.\2.joint_block.attn.joint_bias"),
    (r"(^|\.)STEblocks\.(\d+)\.common_attn_blk\.", r"\1spatial_blocks.\2.joint_block."),
    (r"(^|\.)STEblocks\.(\d+)\.hyper_attn_blk\.hyper_edge\.pro_linears\.0\.", r"\1spatial_blocks.\2.hyper_block.edges.proj."),
    (r"(^|\.)STEblocks\.(\d+)\.hyper_attn_blk\.", r"\1spatial_blocks.\2.hyper_block."),
    (r"(^|\.)TTEblocks\.", r"\1temporal_blocks."),
    (r"(^|\.)Spatial_norm\.", r"\1spatial_norm."),
    (r"(^|\.)Temporal_norm\.", r"\1temporal_norm."),
)
# Published tensors we derive from the config, or never use.
DERIVED = re.compile(r"hyper_edge\.(joint_label|hyper_matrix|merge_weight)$")
POSE_HEAD = re.compile(r"(^|\.)head\.[01]\.(weight|bias)$")

def strip_module_prefix(state_dict: dict) -> dict:
    return {re.sub(r"^(module\.)+", "", k): v for k, v in state_dict.items()}


def is_reference_state_dict(state_dict: dict) -> bool:
    return any(re.search(r"(^|\.)(STEblocks|Spatial_patch_to_embedding)\.", k) for k in state_dict)


def convert_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Published names -> ours. Returns (converted state dict, report) where the report lists the keys
    'dropped' (derived from the config or unused) and the 'joint_label' stored in the file (or None)."""
    converted, dropped, joint_label = {}, [], None
    for key, value in strip_module_prefix(state_dict).items():
        if DERIVED.search(key) or POSE_HEAD.search(key):
            dropped.append(key)
            if key.endswith("joint_label") and joint_label is None:
                joint_label = [int(v) for v in value.flatten().tolist()]
            continue
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value.reshape(()) if key.endswith("attn.alpha") else value
    return converted, {"dropped": dropped, "joint_label": joint_label}


def infer_model_config(state_dict: dict, joint_label=None) -> dict:
    """Model settings implied by the shapes of a converted state dict (config keys and values)."""
    prefix = "backbone." if any(k.startswith("backbone.") for k in state_dict) else ""
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}spatial_blocks\.(\d+)\.", k)))
    settings = {
        "dim_rep": state_dict[f"{prefix}joint_embed.weight"].shape[0],
        "depth": depth,
        "maxlen": state_dict[f"{prefix}temporal_pos"].shape[1],
        "num_heads": state_dict[f"{prefix}spatial_blocks.0.joint_block.attn.joint_bias"].shape[0],
        "version": 2 if f"{prefix}spatial_blocks.0.hyper_block.attn.w1" in state_dict else 1,
        "j2e_layout": "reference",
    }
    if "head.fc2.weight" in state_dict:
        settings["hidden_dim"], settings["action_classes"] = (state_dict["head.fc1.weight"].shape[0],
                                                              state_dict["head.fc2.weight"].shape[0])
    if joint_label is not None:
        settings["joint_label"] = [joint_label]
    return settings
