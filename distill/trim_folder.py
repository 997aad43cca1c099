"""A trimmed model folder: the token-indexed weight rows sliced to the kept vocabulary, config and tokenizer files
renumbered, and the source folder's other files carried over (or dropped where they would disagree).

A leaf module (torch, safetensors, transformers and other leaf modules): the `distill trim` verb writes its folder
with `write_trimmed`.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from distill.names import BACKBONE_MARKER, EXPORT_REPORT, TRIM_REPORT
from distill.st_modules import write_sentence_transformers_config
from distill.trim_vocab import TrimError, check_specials, pieces, trim_tokenizer

#: written here (trimmed), never copied
WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt")
#: not carried over: other copies of the untrimmed weights or vocabulary (they would disagree with the trimmed
#: tokenizer: ONNX graphs, sentencepiece/BPE files, other frameworks) and figures measured on the untrimmed model
DROPPED = ("*.bin", "*.pt", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.model", "vocab.json",
           "merges.txt", "onnx", "openvino", EXPORT_REPORT, TRIM_REPORT, ".*")
#: model types whose position ids count from pad_token_id + 1: their pad id must not move
POSITIONS_FROM_PAD = ("roberta", "xlm-roberta", "camembert", "mpnet")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def folder_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _remap_config(values: dict[str, Any], new_id: dict[int, int]) -> dict[str, Any]:
    """config.json / generation_config.json with every `*_token_id` renumbered."""
    out = dict(values)
    for key, value in values.items():
        if key.endswith("_token_id") and isinstance(value, int) and value in new_id:
            out[key] = new_id[value]
        elif key.endswith("_token_id") and isinstance(value, list):
            out[key] = [new_id.get(i, i) if isinstance(i, int) else i for i in value]
    return out


def _embedding_names(src: Path) -> list[str]:
    """Parameter names of the rows indexed by token id: input embeddings, and output embeddings and their bias."""
    import transformers
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(src))
    arch = getattr(transformers, (config.architectures or [""])[0], None)
    with torch.device("meta"):  # names and tying only: no memory, no weights read
        model = arch(config) if arch is not None else AutoModel.from_config(config)
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    rows = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None:
        rows += [output.weight] + ([output.bias] if getattr(output, "bias", None) is not None else [])
    return [name for param in rows for name in owners.get(id(param), [])]


def trim_weights(src: Path, out: Path, kept: list[int]) -> dict[str, int]:
    """Write `model.safetensors` with the token-indexed rows sliced to `kept`; everything else as it was (dtype
    included). Returns parameter and row counts before/after."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({src / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (src / "model.safetensors").is_file():
        files = [src / "model.safetensors"]
    else:
        raise TrimError(f"{src} has no model.safetensors; re-save the model with save_pretrained() (safetensors) "
                        f"and trim that folder")
    names = set(_embedding_names(src))
    rows = torch.tensor(kept)
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {"format": "pt"}
    counts = {"params_before": 0, "params_after": 0, "rows_before": 0, "rows_after": 0}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            metadata.update(f.metadata() or {})
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
                tensor = f.get_tensor(key)
                counts["params_before"] += tensor.numel()
                if key in names:
                    if kept[-1] >= tensor.shape[0]:
                        raise TrimError(f"{file}: {key} has {tensor.shape[0]} rows but the tokenizer uses id "
                                        f"{kept[-1]}; the tokenizer and the weights do not belong together")
                    counts["rows_before"] = tensor.shape[0]
                    tensor = tensor[rows].contiguous()
                    counts["rows_after"] = tensor.shape[0]
                tensors[key] = tensor
                counts["params_after"] += tensor.numel()
    if not names & tensors.keys():
        raise TrimError(f"{src}: none of the word-embedding tensors {sorted(names)} is in its safetensors files; "
                        f"re-save the model with save_pretrained() and trim that folder")
    save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
    return counts


def write_trimmed(src: Path, out: Path, spec: dict[str, Any], kept: list[int], required: dict[int, str],
                  options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the trimmed model folder: weights, config, tokenizer files, and the source's other files (student
    options, DSE head, sentence-transformers modules); returns sizes and counts.

    Raises:
        TrimError: `kept` drops a special token, or the model's position ids would move.
    """
    check_specials(kept, required)
    new_id = {old: new for new, old in enumerate(kept)}
    out.mkdir(parents=True)
    counts = trim_weights(src, out, kept)

    config = json.loads((src / "config.json").read_text())
    trimmed_config = _remap_config(config, new_id)
    trimmed_config["vocab_size"] = len(kept)
    if config.get("model_type") in POSITIONS_FROM_PAD and trimmed_config.get("pad_token_id") != config.get(
            "pad_token_id"):
        raise TrimError(f"{src}: {config['model_type']} counts positions from pad_token_id, which would move from "
                        f"{config.get('pad_token_id')} to {trimmed_config.get('pad_token_id')}; keep every id below it")
    (out / "config.json").write_text(json.dumps(trimmed_config, indent=2) + "\n")

    trimmed = trim_tokenizer(spec, kept)
    (out / "tokenizer.json").write_text(json.dumps(trimmed, ensure_ascii=False))
    _write_tokenizer_files(src, out, trimmed, new_id)

    bytes_before = sum(folder_bytes(p) for p in src.iterdir() if not _matches(p.name, DROPPED))
    dropped = sorted(p.name for p in src.iterdir() if _matches(p.name, DROPPED) and p.name not in (TRIM_REPORT,))
    done = {"config.json", *TOKENIZER_FILES}
    for path in sorted(src.iterdir()):
        if path.name in done or _matches(path.name, WEIGHTS) or _matches(path.name, DROPPED):
            continue
        if path.is_dir():
            shutil.copytree(path, out / path.name)
        elif path.name == "generation_config.json":
            (out / path.name).write_text(json.dumps(_remap_config(json.loads(path.read_text()), new_id), indent=2))
        elif path.name == BACKBONE_MARKER:
            usage = json.loads(path.read_text())
            if "params" in usage:
                usage["params"] = counts["params_after"]
            (out / path.name).write_text(json.dumps(usage, indent=2) + "\n")
        else:
            shutil.copy2(path, out / path.name)
    if options is not None and not (src / "modules.json").is_file():
        write_sentence_transformers_config(out, options, int(config["hidden_size"]))
    return {**counts, "vocab_before": len(pieces(spec)), "vocab_after": len(pieces(trimmed)),
            "bytes_before": bytes_before, "dropped": dropped}


def _write_tokenizer_files(src: Path, out: Path, trimmed: dict[str, Any], new_id: dict[int, int]) -> None:
    """tokenizer_config.json, special_tokens_map.json, added_tokens.json and vocab.txt, where the source has them,
    with their ids renumbered (they must agree with tokenizer.json: transformers reads ids from several of them)."""
    path = src / "tokenizer_config.json"
    if path.is_file():
        values = _remap_config(json.loads(path.read_text()), new_id)
        if "added_tokens_decoder" in values:
            values["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in values["added_tokens_decoder"].items()}
        (out / path.name).write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n")
    if (src / "special_tokens_map.json").is_file():  # token strings only
        shutil.copy2(src / "special_tokens_map.json", out / "special_tokens_map.json")
    if (src / "added_tokens.json").is_file():
        added = json.loads((src / "added_tokens.json").read_text())
        (out / "added_tokens.json").write_text(json.dumps({t: new_id[i] for t, i in added.items()}, indent=2))
    if (src / "vocab.txt").is_file() and trimmed["model"]["type"] in ("WordPiece", "WordLevel"):
        vocab = trimmed["model"]["vocab"]
        (out / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
