"""Training: the Tiny ImageNet data layer, the seeds' networks, augmentation and the loop."""

from common.cli import require_extra

require_extra("training", "train", ("torch", "numpy", "PIL", "tqdm", "kornia"))
