"""sentence-transformers' module files beside a student folder: what makes `SentenceTransformer(folder)` pool,
normalise and prompt as the student does.

A leaf module (stdlib only): `distill export` writes them for an exported student, `distill trim` for a trimmed
student folder that has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_sentence_transformers_config(folder: Path, cfg: dict[str, Any], dim: int, no_pooler: bool = False) -> None:
    """sentence-transformers' module files in the classic layout (`sentence_transformers.models.*`), which both
    sentence-transformers 5 and 6 load; version 6's own save writes class paths that version 5 cannot import.

    `no_pooler`: the student's encoder has no pooler (mean/cls pooling never uses it), so sentence-transformers must
    build it without one (`add_pooling_layer=False`), or it reports `pooler.dense.*` as missing and "newly
    initialized" to every user of the export."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if cfg["normalize"]:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": cfg["max_seq_length"], "do_lower_case": False,
         # the key both sentence-transformers 5 and 6 read (6 maps it to model_kwargs)
         **({"model_args": {"add_pooling_layer": False}} if no_pooler else {})}, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, "pooling_mode_cls_token": cfg["pooling"] == "cls",
         "pooling_mode_mean_tokens": cfg["pooling"] == "mean", "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True}, indent=2))
    prefix = cfg.get("prefix") or ""
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": {"distill": _version()}, "prompts": {"default": prefix} if prefix else {},
         "default_prompt_name": "default" if prefix else None, "similarity_fn_name": "cosine"}, indent=2))


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("distill")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
