"""The H36M-17 skeleton every clip uses after COCO-17 conversion: names, tree, sides, adjacency; and the
COCO-17 bones of the raw keypoints, for drawing them on video frames. numpy only; shared by the data
pipeline, the model and the visualisation."""
import numpy as np

H36M_JOINT_NAMES = (
    "pelvis", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle", "spine",
    "thorax", "nose", "head", "left shoulder", "left elbow", "left wrist", "right shoulder", "right elbow",
    "right wrist",
)
NUM_JOINTS = len(H36M_JOINT_NAMES)
H36M_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)  # -1: the root has no parent
H36M_LEFT = (4, 5, 6, 11, 12, 13)
H36M_RIGHT = (1, 2, 3, 14, 15, 16)
H36M_MIRROR = tuple(H36M_RIGHT[H36M_LEFT.index(j)] if j in H36M_LEFT else
                    H36M_LEFT[H36M_RIGHT.index(j)] if j in H36M_RIGHT else j for j in range(NUM_JOINTS))  # left <-> right
# COCO-17: 0 nose, 1/2 left/right eye, 3/4 ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips,
# 13/14 knees, 15/16 ankles.
COCO_BONES = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12),
              (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))
H36M_BONES = tuple((child, parent) for child, parent in enumerate(H36M_PARENTS) if parent >= 0)  # 16 bones


def adjacency() -> np.ndarray:
    """Symmetric 0/1 [17, 17]: self-loops plus the 16 bones (the root has no edge to a parent)."""
    matrix = np.eye(NUM_JOINTS, dtype=np.float32)
    for child, parent in H36M_BONES:
        matrix[child, parent] = matrix[parent, child] = 1.0
    return matrix


def normalized_adjacency() -> np.ndarray:
    """The 'uniform' graph: adjacency with every column divided by its degree (A D^-1), so entry [i, j]
    is 1 / degree(j) for neighbours i of j (self included)."""
    matrix = adjacency()
    return matrix / matrix.sum(axis=0, keepdims=True)
