"""Former home of the synthetic street-scene generator, now :mod:`dyn_seg.synthetic` (a
module of its own, outside the dataset registration); this name stays importable."""
from ..synthetic import *  # noqa: F401,F403
