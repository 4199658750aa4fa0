"""Multi-task, meta- and transfer learning on JAX and Flax NNX."""

from mtl.xla_flags import avoid_known_crashes

avoid_known_crashes()  # before anything compiles: see mtl/xla_flags.py
