"""Joint orders and names (reference.md, "Joint orders")."""

MANO_JOINT_NAMES = [
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
]
TIP_NAMES = ["thumb_tip", "index_tip", "middle_tip", "ring_tip", "pinky_tip"]

# MANO's 16 joints followed by the 5 tips (thumb, index, middle, ring, pinky) -> OpenPose/MediaPipe 21.
MANO_TO_OPENPOSE = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]

OPENPOSE_NAMES = [
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
]
# Parent of each OpenPose keypoint, for drawing skeletons (wrist has none).
OPENPOSE_PARENTS = [-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19]
# Fingertip vertex ids on the real MANO mesh (smplx's choice; manopth uses [745, 317, 444, 556, 673]).
MANO_TIP_VERTEX_IDS = [744, 320, 443, 554, 671]
