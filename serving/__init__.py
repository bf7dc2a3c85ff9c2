"""Serving: a BentoML service answering top-k Tiny ImageNet predictions."""
