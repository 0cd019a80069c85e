"""Decoders and losses on the routed features."""
