"""Vocabulary trimming of a fast tokenizer: which pieces to keep, and `tokenizer.json` rewritten to keep only them.

Keeps the special tokens, every piece the original tokenizer produces on a corpus, and optionally the `top_n` most
probable other pieces, renumbered in their original order. Text made only of kept pieces is tokenised exactly as
before; other text is segmented into smaller kept pieces (or the unknown token).
Reference: Ushio, Zhou and Camacho-Collados, 2023, "An Efficient Multilingual Language Model Compression through
Vocabulary Trimming" (Findings of EMNLP 2023, arXiv:2305.15020).

Why covered text cannot change:
- Unigram (sentencepiece, XLM-R): Viterbi returns the best-scoring segmentation into vocabulary pieces. Every
  segmentation a sub-vocabulary allows was allowed before, at the same score, so when the original best path
  survives it is still the best. One catch: a character with no single-character piece gets an unknown-token node
  scored `min(piece scores) - 10` (tokenizers' and sentencepiece's unigram lattice); dropping the rarest pieces
  would raise that minimum and could let an unknown-token path win, so the lowest-scoring piece is always kept.
- WordPiece (BERT): greedy longest-match-first; each original piece was the longest match in the full vocabulary,
  so it is still the longest among the kept pieces.
`distill trim` checks the trimmed folder before it gets its name: the whole corpus must tokenise to the same pieces,
and a sample must embed at cosine >= 0.9999 against the original model.

A leaf module (stdlib, `tokenizers` and transformers' tokenizer loading): `distill.trim_folder` writes the trimmed
model with it, the `distill trim` verb chooses the pieces with it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: tokenizer models whose vocabulary trims by dropping entries (BPE merges name pieces and would need rewriting)
MODELS = ("Unigram", "WordPiece", "WordLevel")


class TrimError(ValueError):
    """A trim that cannot be done as asked; the message names the token, file or option and the fix."""


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer as transformers loads it; its backend (`tokenizers`) is what gets trimmed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise TrimError(f"{folder}: the tokenizer has no fast (tokenizers) backend; trim rewrites tokenizer.json, "
                        f"so save the model with a fast tokenizer first")
    return tokenizer


def raw_backend(spec: dict[str, Any]) -> Any:
    """A tokenizers backend for `spec` that neither truncates nor pads: every piece of every text counts."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(spec))
    backend.no_truncation()
    backend.no_padding()
    return backend


def pieces(spec: dict[str, Any]) -> dict[int, str]:
    """id -> token string: the model's vocabulary, then added tokens that are not in it."""
    model = spec["model"]
    if model["type"] == "Unigram":
        tokens = {i: piece for i, (piece, _) in enumerate(model["vocab"])}
    else:
        tokens = {i: token for token, i in model["vocab"].items()}
    for added in spec.get("added_tokens") or []:
        tokens.setdefault(added["id"], added["content"])
    return tokens


def _model_size(spec: dict[str, Any]) -> int:
    return len(spec["model"]["vocab"])


def _processor_ids(processor: dict[str, Any] | None) -> dict[int, str]:
    """Token ids a post-processor inserts (`<s>`, `</s>`, `[CLS]`, `[SEP]`)."""
    if not processor:
        return {}
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        return {i: t for special in processor["special_tokens"].values() for i, t in zip(special["ids"],
                                                                                        special["tokens"])}
    if kind in ("RobertaProcessing", "BertProcessing"):
        return {processor[key][1]: processor[key][0] for key in ("sep", "cls")}
    if kind == "Sequence":
        return {i: t for p in processor["processors"] for i, t in _processor_ids(p).items()}
    return {}


def _remap_processor(processor: dict[str, Any] | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]
    elif kind == "Sequence":
        for p in processor["processors"]:
            _remap_processor(p, new_id)


def unknown_id(spec: dict[str, Any], source: Path | str = "the model") -> int:
    """The unknown token's id; a tokenizer without one could not encode text outside the kept vocabulary."""
    model = spec["model"]
    if model["type"] not in MODELS:
        raise TrimError(f"{source}: the tokenizer is a {model['type']} model; trim supports {', '.join(MODELS)} "
                        f"(BPE merges name pieces by string and would need rewriting)")
    if model["type"] == "Unigram":
        unk = model.get("unk_id")
    else:
        unk = model["vocab"].get(model.get("unk_token") or "")
    if unk is None:
        raise TrimError(f"{source}: the tokenizer has no unknown token ({model['type']} unk is unset), so text "
                        f"outside the kept vocabulary could not be encoded; trim needs a tokenizer with an unknown "
                        f"token")
    return int(unk)


def required_ids(tokenizer: Any, spec: dict[str, Any], config: dict[str, Any], source: Path | str = "the model") \
        -> dict[int, str]:
    """Ids that every trimmed vocabulary must keep, with their token strings: the unknown token, added and
    special tokens (pad, unk, cls, sep, bos, eos, mask, extras), those the post-processor and padding insert, and
    the `*_token_id`s of config.json.

    Raises:
        TrimError: the tokenizer has no unknown token, or is not a Unigram/WordPiece/WordLevel model.
    """
    tokens = pieces(spec)
    out: dict[int, str] = {}
    unk = unknown_id(spec, source)
    out[unk] = tokens[unk]
    for added in spec.get("added_tokens") or []:
        out[added["id"]] = added["content"]
    for token in tokenizer.all_special_tokens:
        i = tokenizer.backend_tokenizer.token_to_id(token)
        if i is not None:
            out[i] = token
    out.update(_processor_ids(spec.get("post_processor")))
    padding = spec.get("padding")
    if padding and padding.get("pad_id") is not None:
        out[padding["pad_id"]] = padding.get("pad_token", tokens.get(padding["pad_id"], ""))
    for key, value in config.items():
        for i in value if isinstance(value, list) else [value]:
            if key.endswith("_token_id") and isinstance(i, int) and i in tokens:
                out.setdefault(i, tokens[i])
    return out


def select_vocabulary(spec: dict[str, Any], token_ids: Iterable[list[int]], required: dict[int, str],
                      top_n: int | None = None) -> tuple[list[int], dict[str, int]]:
    """The kept ids in their original order, and how many each reason kept.

    Args:
        spec: the tokenizer's JSON (`tokenizers`' format).
        token_ids: the original tokenizer's ids of the corpus texts (and of the input prefixes).
        required: ids that must stay (`required_ids`).
        top_n: also keep the N highest-scoring Unigram pieces not used by the corpus.
    """
    model = spec["model"]
    kept = set(required)
    counts = {"special": len(kept)}
    seen = set().union(*map(set, token_ids)) if token_ids else set()
    counts["corpus"] = len(seen - kept)
    kept |= seen
    if model["type"] == "Unigram":
        scores = [score for _, score in model["vocab"]]
        # keep the unknown-token score (min score - 10) where it was, or an unknown path could beat a kept one
        rarest = min(range(len(scores)), key=scores.__getitem__)
        counts["rarest_piece"] = int(rarest not in kept)
        kept.add(rarest)
        if model.get("byte_fallback"):  # characters outside the kept pieces fall back to their bytes
            byte_ids = {i for i, (piece, _) in enumerate(model["vocab"]) if piece.startswith("<0x") and len(piece) == 6}
            counts["byte_fallback"] = len(byte_ids - kept)
            kept |= byte_ids
    if top_n:
        if model["type"] != "Unigram":
            raise TrimError(f"top_n ranks pieces by their Unigram log-probability, and this {model['type']} "
                            f"vocabulary carries no frequencies; drop --top_n and add text to --corpus instead")
        order = sorted((i for i in range(len(scores)) if i not in kept), key=lambda i: (-scores[i], i))
        extra = set(order[:top_n])
        counts["top_n"] = len(extra)
        kept |= extra
    counts["total"] = len(kept)
    return sorted(kept), counts


def check_specials(kept: Iterable[int], required: dict[int, str]) -> None:
    """Refuse a kept set that drops a special token (a model without its <pad>/<s>/[CLS] breaks silently)."""
    missing = {i: t for i, t in required.items() if i not in set(kept)}
    if missing:
        named = ", ".join(f"{t!r} (id {i})" for i, t in sorted(missing.items()))
        raise TrimError(f"the kept vocabulary drops special token(s) {named}; special tokens must stay: keep "
                        f"every id of required_ids() (select_vocabulary does)")


def trim_tokenizer(spec: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    """The tokenizer JSON restricted to `kept` (original order), with every id renumbered."""
    new_id = {old: new for new, old in enumerate(kept)}
    out = copy.deepcopy(spec)
    model = out["model"]
    size = _model_size(spec)
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept if i < size]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        token = {i: t for t, i in model["vocab"].items()}
        model["vocab"] = {token[i]: new_id[i] for i in kept if i in token}
    # added tokens outside the vocabulary have ids after it, so theirs stay after it too
    assert all(new_id[i] < len(model["vocab"]) for i in kept if i < size)
    for added in out.get("added_tokens") or []:
        added["id"] = new_id[added["id"]]
    if out.get("padding") and out["padding"].get("pad_id") is not None:
        out["padding"]["pad_id"] = new_id[out["padding"]["pad_id"]]
    _remap_processor(out.get("post_processor"), new_id)
    return out
