"""distill: distil cross-encoder teachers into fast bi-encoder students."""

__version__ = "0.1.0"
