"""The command-line programs' logic, one module per program.

``tools/NAME.py``, ``train_net.py`` and ``datasets/NAME.py`` are thin scripts that call
``dyn_seg.tools.NAME.main``; the same programs run as ``python -m dyn_seg.tools.NAME``
from an installed package. Each module's ``main(argv)`` takes the arguments a script
gets and returns what the tests and callers inspect; ``train_net`` keeps detectron2's
shape instead (``setup(args)``, ``main(args)``, and ``launch_main(argv)`` that the script
calls).
"""
