"""The routed network (a detectron2 backbone) and its whole-network FLOPs analysis."""
