"""Students: bi-encoders (text -> embedding, + optional DSE pair head) and static token-table encoders."""

from students.bi_encoder import BiEncoder, DSEHead
from students.static import StaticStudent

__all__ = ["BiEncoder", "DSEHead", "StaticStudent"]
