"""sentence-transformers' module files beside a student folder: what makes `SentenceTransformer(folder)` pool,
normalise and prompt as the student does.

A leaf module (stdlib; safetensors for the one weight file it writes, a Matryoshka point's dimension slice):
`distill export` writes them for an exported student, `distill trim` for a trimmed student folder that has none.

The student's prefix becomes sentence-transformers' `query` and `document` prompts, with `query` the default prompt,
so `model.encode`, `model.encode_query` and `model.encode_document` all prepend it as the student does.
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
    dims = cfg.get("dims")
    if dims is not None and dims < dim:
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        _write_slice(folder / "2_Dense", dim, dims)
    _write_modules(folder, modules, cfg["normalize"])
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": cfg["max_seq_length"], "do_lower_case": False,
         # the key both sentence-transformers 5 and 6 read (6 maps it to model_kwargs)
         **({"model_args": {"add_pooling_layer": False}} if no_pooler else {})}, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, "pooling_mode_cls_token": cfg["pooling"] == "cls",
         "pooling_mode_mean_tokens": cfg["pooling"] == "mean", "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True}, indent=2))
    _write_config(folder, prompts(cfg), dims if dims is not None and dims < dim else None)


def write_static_sentence_transformers_config(folder: Path, cfg: dict[str, Any]) -> None:
    """sentence-transformers' module files for a static student folder (`students.StaticStudent.save_pretrained`:
    `tokenizer.json` and `model.safetensors` at the root, which `StaticEmbedding` reads), + `Normalize`."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.StaticEmbedding"}]
    _write_modules(folder, modules, cfg["normalize"])
    _write_config(folder, prompts(cfg), None)


def _write_modules(folder: Path, modules: list[dict[str, Any]], normalize: bool) -> None:
    if normalize:
        idx = len(modules)
        path = f"{idx}_Normalize"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": "sentence_transformers.models.Normalize"})
        (folder / path).mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))


def _write_slice(folder: Path, width: int, dims: int) -> None:
    """A bias-free identity `Dense` keeping the first `dims` of `width` dimensions: the cut a Matryoshka point makes
    before normalising (`truncate_dim` alone cuts after sentence-transformers' `Normalize`: vectors not unit length)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"in_features": width, "out_features": dims, "bias": False,
         "activation_function": "torch.nn.modules.linear.Identity"}, indent=2))
    save_file({"linear.weight": torch.eye(dims, width)}, str(folder / "model.safetensors"))


def prompts(cfg: dict[str, Any]) -> dict[str, str]:
    """A student's prefixes as sentence-transformers prompts: `query` its prefix, `document` its document prefix
    (the query's where it has none); empty when neither has one."""
    query = cfg.get("prefix") or ""
    document = cfg.get("document_prefix")
    document = query if document is None else document
    return {"query": query, "document": document} if query or document else {}


def _write_config(folder: Path, prompts: dict[str, str], truncate_dim: int | None) -> None:
    # `query` and `document` prompts: sentence-transformers 6 gives both names an empty prompt unless the folder
    # sets them, and `encode_query`/`encode_document` use those rather than the default prompt
    config = {"__version__": {"distill": _version()}, "prompts": prompts,
              "default_prompt_name": "query" if prompts else None, "similarity_fn_name": "cosine"}
    if truncate_dim is not None:  # recorded for tools that read it; the Dense slice already cut the vectors
        config["truncate_dim"] = truncate_dim
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2))


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("distill")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
