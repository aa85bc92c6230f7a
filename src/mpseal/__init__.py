"""mpseal: package, sign, lock down, provision and update MicroPython products."""

__version__ = "0.1.0"
