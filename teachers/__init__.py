"""Cross-encoder teachers: (text_a, text_b) -> score."""

from teachers.cross_encoder import CrossEncoder

__all__ = ["CrossEncoder"]
