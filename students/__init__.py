"""Bi-encoder students: text -> embedding (+ optional DSE pair head)."""

from students.bi_encoder import BiEncoder, DSEHead

__all__ = ["BiEncoder", "DSEHead"]
