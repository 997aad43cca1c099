"""Cross-encoder teachers: (text_a, text_b) -> score."""

from teachers.cross_encoder import CrossEncoder
from teachers.folder import FolderCrossEncoder

__all__ = ["CrossEncoder", "FolderCrossEncoder"]
