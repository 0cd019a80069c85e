"""Helpers shared by the command-line tools (``tools/``, ``datasets/``, ``train_net.py``)."""
