"""`distill trim`: keep only the vocabulary a corpus uses, and the word-embedding rows it indexes.

A multilingual encoder spends most of its parameters on its vocabulary (multilingual-e5-small: 96M of 118M in the
250k-row word-embedding matrix), while a model meant for a few languages uses a small share of those pieces.
Trimming keeps the special tokens, every piece the original tokenizer produces on a training corpus, and optionally
the `top_n` most probable other pieces; it rewrites the fast tokenizer (`tokenizer.json`) with the kept pieces
renumbered in their original order and slices the embedding rows to match. Text made only of kept pieces is
tokenised and embedded exactly as before; other text is segmented into smaller kept pieces (or the unknown token).
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
The trimmed folder is checked before it gets its name: the whole corpus must tokenise to the same pieces, and a
sample must embed at cosine >= 0.9999 against the original model.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from distill import catalog, multilingual, outdir
from distill.backbones import resolve
from distill.data import DataError, read_pairs, read_texts
from students.bi_encoder import CONFIG_NAME as STUDENT_CONFIG

REPORT = "trim_report.json"
BACKBONE_CONFIG = "distill_backbone.json"  # distill.prepare.MARKER: how a prepared backbone expects its inputs
MIN_COSINE = 0.9999  # trimmed vs original embeddings of corpus sentences
UNKNOWN_WARN = 0.05  # warn when more than this share of an evaluation set's tokens is unknown after trimming
CHECK_TEXTS = 32  # corpus sentences embedded by both models before the folder is written
TEXT_SUFFIXES = ("", ".txt", ".text")  # one sentence per line; other suffixes are pair or text tables
#: tokenizer models whose vocabulary trims by dropping entries (BPE merges name pieces and would need rewriting)
MODELS = ("Unigram", "WordPiece", "WordLevel")
#: written here (trimmed), never copied
WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt")
#: not carried over: other copies of the untrimmed weights or vocabulary (they would disagree with the trimmed
#: tokenizer: ONNX graphs, sentencepiece/BPE files, other frameworks) and figures measured on the untrimmed model
DROPPED = ("*.bin", "*.pt", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.model", "vocab.json",
           "merges.txt", "onnx", "openvino", "export_report.json", REPORT, ".*")
#: model types whose position ids count from pad_token_id + 1: their pad id must not move
POSITIONS_FROM_PAD = ("roberta", "xlm-roberta", "camembert", "mpnet")


class TrimError(ValueError):
    """A trim that cannot be done as asked; the message names the token, file or option and the fix."""


def main(model: str, out: str, languages: list[str] | None = None, corpus: list[str] | None = None,
         top_n: int | None = None, eval_languages: list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Trim a student's or backbone's vocabulary to a training corpus: smaller, same embeddings for covered text.

    Keeps the special tokens, every piece the model's own tokenizer produces on the corpus (with the student's or
    backbone's input prefixes, e.g. e5's "query: "), and optionally the `top_n` most probable other pieces. Writes a
    folder that transformers (`AutoModel`, `AutoTokenizer`), sentence-transformers and `students.BiEncoder` load, and
    `trim_report.json` in it: vocabulary size, parameters and bytes on disk before/after, and the token coverage of
    each evaluation set. Ushio et al., 2023, "An Efficient Multilingual Language Model Compression through
    Vocabulary Trimming".

    Args:
        model: a student folder (has distill_student.json), an exported folder (`distill export`), a transformers
            folder, or a backbone short name (e.g. multilingual-e5-small).
        out: the folder to write.
        languages: stsb_multi_mt languages (ISO 639-1) whose training sentences are the corpus, e.g. [en, de].
        corpus: more training text: text files (one sentence per line) or pair files (csv, tsv, jsonl, parquet with
            text_a/text_b, or a `text` column). Never test data: the kept vocabulary would flatter the evaluation.
        top_n: also keep the N most probable pieces the corpus did not use, so unseen words still find whole pieces.
            Unigram tokenizers only: the piece's log-probability in tokenizer.json stands in for its frequency;
            WordPiece vocabularies carry no frequencies.
        eval_languages: languages whose stsb_multi_mt test and Tatoeba sentences measure the token coverage before
            and after (default: `languages`); they are never used to choose pieces.
        overwrite: replace `out` if it exists.
    """
    target = Path(out)
    try:  # never replace a folder trim did not write
        outdir.check_out(target, REPORT, "distill trim", overwrite)
    except outdir.OutDirError as err:
        raise TrimError(str(err)) from None
    if top_n is not None and top_n < 0:
        raise TrimError(f"top_n is {top_n}; expected a count >= 0 (or leave it out)")
    src = Path(resolve(model))
    if not src.is_dir():
        raise TrimError(f"model {model!r} resolved to {src}, which is not a local folder; trim needs the files")
    if target.resolve() == src.resolve() or src.resolve() in target.resolve().parents:
        raise TrimError(f"--out {target} is the model folder or inside it; write the trimmed model elsewhere")
    eval_sets = evaluation_sets((languages or []) if eval_languages is None else eval_languages)
    texts, sources = read_corpus(languages, corpus)
    options = student_options(src)
    prefixes = input_prefixes(src, options)

    tokenizer = load_tokenizer(src)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    config = json.loads((src / "config.json").read_text())
    required = required_ids(tokenizer, spec, config, src)
    backend = _encoder(spec)
    # the student tokenises prefix + text, so the corpus is tokenised that way; other prefixes (e5's "passage: ")
    # are kept from their own tokens
    first = prefixes[0] if prefixes else ""
    corpus_ids = [e.ids for e in backend.encode_batch([first + t for t in texts], add_special_tokens=True)]
    prefix_ids = [e.ids for e in backend.encode_batch(prefixes, add_special_tokens=False)] if prefixes else []
    kept, counts = select_vocabulary(spec, corpus_ids + prefix_ids, required, top_n)

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = outdir.partial_dir(target)
    try:
        written = write_trimmed(src, partial, spec, kept, required, options)
        new_id = {old: new for new, old in enumerate(kept)}
        step = max(1, len(texts) // CHECK_TEXTS)
        checks = check_trimmed(src, partial, options, first, texts, [[new_id[i] for i in ids] for ids in corpus_ids],
                               texts[::step][:CHECK_TEXTS])
        coverage = measure_coverage(spec, partial, new_id, eval_sets)
        report = {
            "model": str(src), "tokenizer": spec["model"]["type"], "corpus": {"sources": sources, "texts": len(texts)},
            "prefixes": prefixes, "top_n": top_n, "kept": counts,
            "vocab_size": {"before": written["vocab_before"], "after": written["vocab_after"]},
            "embedding_rows": {"before": written["rows_before"], "after": written["rows_after"]},
            "parameters": {"before": written["params_before"], "after": written["params_after"]},
            "size_bytes": {"before": written["bytes_before"], "after": _bytes(partial)},
            "dropped_files": written["dropped"], "checks": checks, "coverage": coverage,
        }
        for key in ("vocab_size", "parameters", "size_bytes"):
            report[key]["reduction"] = round(1 - report[key]["after"] / report[key]["before"], 4)
        (partial / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        card = partial / "README.md"
        if card.is_file():  # an exported model card: its figures describe the untrimmed model
            card.write_text(card.read_text() + "\n## Vocabulary trimming\n\n" + markdown(report) + "\n\n"
                            f"Trimmed with `distill trim` (see `{REPORT}`); figures above this section were measured "
                            f"before trimming.\n")
        outdir.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    warn_uncovered(coverage)
    print(f"distill trim -> {target}\n\n{markdown(report)}")
    return report


# --------------------------------------------------------------------------------------------------- inputs


def read_corpus(languages: list[str] | None, corpus: list[str] | None) -> tuple[list[str], list[str]]:
    """The training sentences whose pieces are kept, and a name for each source.

    Raises:
        TrimError: no source, a source without text, or a test set (catalog or data folder).
    """
    texts: list[str] = []
    sources: list[str] = []
    if languages:
        got = multilingual.texts(languages, "train")  # training split only: test sentences would flatter coverage
        if not got:
            raise TrimError(f"stsb_multi_mt train has no sentences for {languages}; check --languages")
        texts += got
        sources.append(f"stsb_multi_mt/train ({', '.join(languages)})")
    for source in corpus or []:
        got = _read_source(source)
        if not got:
            raise TrimError(f"{source}: no text; give a file with one sentence per line or a pair file")
        texts += got
        sources.append(source)
    if not texts:
        raise TrimError("no corpus: pass --languages '[en, de]' (stsb_multi_mt training sentences) and/or "
                        "--corpus '[file.txt]' (training text)")
    return texts, sources


def _is_test_set(source: str) -> bool:
    """A catalog test split, or a file of the data folder that holds one (test sentences would flatter coverage)."""
    name = source.split("/")
    if catalog.is_name(source):
        # tatoeba_challenge is a test set upstream but trains here (issue: alignment); the LASER Tatoeba tests
        return name[-1] in ("test", "devtest") or name[0] in ("tatoeba", "xquad")
    path = Path(source)
    root = catalog.data_root().resolve()
    return path.exists() and root in path.resolve().parents and (
        "test" in path.name or "tatoeba" in str(path) or "xquad" in str(path))


def _read_source(source: str) -> list[str]:
    path = Path(source)
    if _is_test_set(source):
        raise TrimError(f"{source} is a test set; trim keeps the vocabulary of training data only (test sentences "
                        f"would flatter the evaluation): use its train split")
    if catalog.is_name(source):  # a catalog set: pairs or parallel text, both sides
        try:
            return catalog.texts(source)
        except catalog.CatalogError as err:
            raise TrimError(str(err)) from None
    if not path.is_file() and not source.startswith("hf:"):
        raise TrimError(f"{source}: no such file; fix --corpus")
    if path.suffix.lower() in TEXT_SUFFIXES and not source.startswith("hf:"):
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        rows, _ = read_pairs(source, label_column=None)
        return list(rows["text_a"]) + list(rows["text_b"])
    except DataError as pair_error:
        try:
            return list(read_texts(source)["text_a"])
        except DataError:
            raise TrimError(f"{source}: neither a pair file (text_a, text_b) nor a text table (text): "
                            f"{pair_error}") from None


def evaluation_sets(languages: list[str]) -> dict[str, list[str]]:
    """Sentences whose coverage is reported: stsb_multi_mt test (both sides) and Tatoeba (xx and English sides)."""
    sets: dict[str, list[str]] = {}
    for lang in languages:
        if lang in multilingual.STSB_LANGUAGES:
            frame = multilingual.read_stsb_mt(lang, "test")
            sets[f"stsb_multi_mt/test/{lang}"] = frame.text_a.tolist() + frame.text_b.tolist()
        if lang != multilingual.PIVOT:  # Tatoeba pairs xx with English; an English set would be that side again
            try:
                xx, en = multilingual.read_tatoeba(lang)
            except DataError:
                if lang in multilingual.STSB_LANGUAGES:
                    continue
                raise TrimError(f"eval_languages: {lang!r} is neither an stsb_multi_mt language "
                                f"({', '.join(multilingual.STSB_LANGUAGES)}) nor a Tatoeba one") from None
            sets[f"tatoeba/{lang}-en"] = xx + en
    return sets


def student_options(folder: Path) -> dict[str, Any] | None:
    """A distill student's options (pooling, normalize, max_seq_length, prefix), or None for a plain backbone."""
    path = folder / STUDENT_CONFIG
    return json.loads(path.read_text()) if path.is_file() else None


def input_prefixes(folder: Path, options: dict[str, Any] | None) -> list[str]:
    """Prefixes the model is used with (first: the one its texts get): the student's, or those a prepared
    backbone records (e5: "query: ", "passage: "); their pieces are kept whatever the corpus holds."""
    found = [options["prefix"]] if options and options.get("prefix") else []
    path = folder / BACKBONE_CONFIG
    if path.is_file():
        usage = json.loads(path.read_text())
        found += [v for k, v in usage.items() if k.endswith("prefix") and isinstance(v, str) and v]
    return list(dict.fromkeys(found))


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer as transformers loads it; its backend (`tokenizers`) is what gets trimmed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise TrimError(f"{folder}: the tokenizer has no fast (tokenizers) backend; trim rewrites tokenizer.json, "
                        f"so save the model with a fast tokenizer first")
    return tokenizer


def _encoder(spec: dict[str, Any]) -> Any:
    """A tokenizers backend for `spec` that neither truncates nor pads: every piece of every text counts."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(spec))
    backend.no_truncation()
    backend.no_padding()
    return backend


# ------------------------------------------------------------------------------------------ the vocabulary


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


# ------------------------------------------------------------------------------------------------ writing


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _bytes(path: Path) -> int:
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

    bytes_before = sum(_bytes(p) for p in src.iterdir() if not _matches(p.name, DROPPED))
    dropped = sorted(p.name for p in src.iterdir() if _matches(p.name, DROPPED) and p.name not in (REPORT,))
    done = {"config.json", *TOKENIZER_FILES}
    for path in sorted(src.iterdir()):
        if path.name in done or _matches(path.name, WEIGHTS) or _matches(path.name, DROPPED):
            continue
        if path.is_dir():
            shutil.copytree(path, out / path.name)
        elif path.name == "generation_config.json":
            (out / path.name).write_text(json.dumps(_remap_config(json.loads(path.read_text()), new_id), indent=2))
        elif path.name == BACKBONE_CONFIG:
            usage = json.loads(path.read_text())
            if "params" in usage:
                usage["params"] = counts["params_after"]
            (out / path.name).write_text(json.dumps(usage, indent=2) + "\n")
        else:
            shutil.copy2(path, out / path.name)
    if options is not None and not (src / "modules.json").is_file():
        from distill.export import write_sentence_transformers_config  # imported here: export pulls in Lightning

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


# ------------------------------------------------------------------------------------------------ checking


def check_trimmed(src: Path, out: Path, options: dict[str, Any] | None, prefix: str, texts: list[str],
                  expected: list[list[int]], sample: list[str]) -> dict[str, Any]:
    """Prove the trimmed folder behaves like the original on the corpus: the same pieces for every text (as
    transformers loads the tokenizer) and the same embeddings for a sample.

    Raises:
        TrimError: a text tokenises differently, a special token changed, or an embedding moved (cosine < 0.9999);
            the folder is then not written.
    """
    from students import BiEncoder

    trimmed = load_tokenizer(out)
    original = load_tokenizer(src)
    for name, token in original.special_tokens_map.items():
        if not isinstance(token, str):  # lists of extra special tokens: added tokens, kept by id
            continue
        if getattr(trimmed, name, None) != token or trimmed.convert_ids_to_tokens(getattr(trimmed, f"{name}_id")) \
                != token:
            raise TrimError(f"{out}: the special token {name}={token!r} did not survive trimming; the folder was not "
                            f"written (please report this)")
    backend = _encoder(json.loads(trimmed.backend_tokenizer.to_str()))
    got = [e.ids for e in backend.encode_batch([prefix + t for t in texts], add_special_tokens=True)]
    for text, ids, want in zip(texts, got, expected):
        if ids != want:
            raise TrimError(f"the trimmed tokenizer splits {text!r} into {trimmed.convert_ids_to_tokens(ids)}, the "
                            f"original into {trimmed.convert_ids_to_tokens(want)}; the folder was not written (please "
                            f"report this)")
    kwargs = {k: v for k, v in (options or {}).items() if k in ("pooling", "normalize", "max_seq_length")}
    kwargs["prefix"] = prefix
    before = BiEncoder(backbone=str(src), **kwargs).encode(sample)
    after = BiEncoder(backbone=str(out), **kwargs).encode(sample)
    cosine = torch.nn.functional.cosine_similarity(before, after, dim=-1).min().item()
    if cosine < MIN_COSINE:
        raise TrimError(f"trimmed embeddings differ from the original's on corpus sentences (min cosine {cosine:.6f} "
                        f"< {MIN_COSINE}); the folder was not written (please report this)")
    return {"corpus_texts_same_tokens": len(texts), "embedded_texts": len(sample), "min_cosine": round(cosine, 6)}


def measure_coverage(spec: dict[str, Any], out: Path, new_id: dict[int, int],
                     sets: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per evaluation set: its tokens (original tokenizer, no special tokens) and the share that are known before
    and kept after trimming, the share of texts made only of kept pieces (their embeddings are unchanged), and,
    tokenised by the trimmed tokenizer, the share of unknown tokens and of texts that are nothing but unknown."""
    original = _encoder(spec)
    trimmed_spec = json.loads((out / "tokenizer.json").read_text())
    trimmed = _encoder(trimmed_spec)
    unk_before, unk_after = unknown_id(spec), unknown_id(trimmed_spec)
    # a bare word-boundary piece (Metaspace's "▁" before an unknown word) says nothing about the text
    blank = {i for i, t in pieces(trimmed_spec).items() if not t.replace("▁", "").strip()} | {unk_after}
    report: dict[str, dict[str, Any]] = {}
    for name, texts in sets.items():
        before = [e.ids for e in original.encode_batch(texts, add_special_tokens=False)]
        after = [e.ids for e in trimmed.encode_batch(texts, add_special_tokens=False)]
        n_before = sum(map(len, before)) or 1
        n_after = sum(map(len, after)) or 1
        unknown_after = sum(i == unk_after for ids in after for i in ids)
        report[name] = {
            "texts": len(texts), "tokens": n_before,
            "coverage_before": round(1 - sum(i == unk_before for ids in before for i in ids) / n_before, 4),
            "coverage_after": round(sum(i in new_id and i != unk_before for ids in before for i in ids) / n_before, 4),
            "covered_texts": round(sum(all(i in new_id for i in ids) for ids in before) / max(len(texts), 1), 4),
            "unknown_after": round(unknown_after / n_after, 4),
            "unknown_texts": round(sum(unk_after in ids and all(i in blank for i in ids) for ids in after)
                                   / max(len(texts), 1), 4),
        }
    return report


def warn_uncovered(coverage: dict[str, dict[str, Any]]) -> None:
    """One warning per evaluation set that the trimmed vocabulary leaves largely unknown."""
    for name, c in coverage.items():
        if c["unknown_texts"] > 0:
            warnings.warn(f"trim: {name}: {c['unknown_texts']:.1%} of its texts are entirely outside the trimmed "
                          f"vocabulary ({c['unknown_after']:.1%} of its tokens unknown); add its language to "
                          f"--languages or its training text to --corpus", stacklevel=3)
        elif c["unknown_after"] > UNKNOWN_WARN:
            warnings.warn(f"trim: {name}: {c['unknown_after']:.1%} of its tokens are unknown after trimming; add "
                          f"its language to --languages, more text to --corpus, or raise --top_n", stacklevel=3)


def markdown(report: dict[str, Any]) -> str:
    """The report as two Markdown tables (sizes, coverage)."""
    lines = ["| | before | after | reduction |", "|---|---|---|---|"]
    for key, label, scale in (("vocab_size", "vocabulary", 1), ("parameters", "parameters (M)", 1e6),
                              ("size_bytes", "size on disk (MB)", 1e6)):
        r = report[key]
        fmt = "{:,.0f}" if scale == 1 else "{:,.1f}"
        lines.append(f"| {label} | {fmt.format(r['before'] / scale)} | {fmt.format(r['after'] / scale)} | "
                     f"{r['reduction']:.1%} |")
    if report["coverage"]:
        lines += ["", "| evaluation set | texts | token coverage before | after | texts unchanged | unknown after |",
                  "|---|---|---|---|---|---|"]
        for name, c in report["coverage"].items():
            lines.append(f"| {name} | {c['texts']} | {c['coverage_before']:.2%} | {c['coverage_after']:.2%} | "
                         f"{c['covered_texts']:.1%} | {c['unknown_after']:.2%} |")
    return "\n".join(lines)
