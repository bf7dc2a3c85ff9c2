"""Training: the Tiny ImageNet data layer, the seeds' networks, augmentation and the loop."""
