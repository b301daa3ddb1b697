"""Image embedding server speaking the Open Inference Protocol V2."""

__version__ = "0.1.0"
