"""The canonical body frame that every checkpoint's body input lives in.

CloSe-Net's body input is, per scan point, a rest-pose coordinate of the body
fitted to the scan. The published weights learned the SMPL T-pose mean shape:
metres, y up, facing +z, vertex centroid at the origin. This project maps
Anny's T-pose mean shape into that same frame (see the body-prior fact sheet),
so published and project-trained checkpoints take the same body input.
"""

CANONICAL_FRAME_ID = "smpl-tpose-centroid-v1"

# Bounding box of the SMPL T-pose mean-shape template in this frame (metres).
SMPL_TEMPLATE_BBOX_MIN = (-0.8720, -1.1618, -0.1224)
SMPL_TEMPLATE_BBOX_MAX = (0.8731, 0.5555, 0.1680)
