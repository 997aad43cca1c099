"""`distill trim`: keep only the vocabulary a corpus uses, and the word-embedding rows it indexes.

A multilingual encoder spends most of its parameters on its vocabulary (multilingual-e5-small: 96M of 118M in the
250k-row word-embedding matrix), while a model meant for a few languages uses a small share of those pieces. The
verb reads the corpus and the evaluation sets (`distill.trim_corpus`), chooses the pieces (`distill.trim_vocab`, which
also says why covered text cannot change), writes the trimmed folder (`distill.trim_folder`), and checks it against
the original model before it gets its name. Reference: Ushio, Zhou and Camacho-Collados, 2023, "An Efficient
Multilingual Language Model Compression through Vocabulary Trimming" (Findings of EMNLP 2023, arXiv:2305.15020).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch

from distill import outdir
from distill.backbones import resolve
from distill.names import BACKBONE_MARKER, MODEL_CARD, STUDENT_CONFIG, TRIM_REPORT
from distill.trim_corpus import evaluation_sets, measure_coverage, read_corpus, warn_uncovered
from distill.trim_folder import folder_bytes, write_trimmed
from distill.trim_vocab import TrimError, load_tokenizer, raw_backend, required_ids, select_vocabulary

MIN_COSINE = 0.9999  # trimmed vs original embeddings of corpus sentences
CHECK_TEXTS = 32  # corpus sentences embedded by both models before the folder is written


class Plan(NamedTuple):
    """What a trim keeps, and what it was chosen from."""

    spec: dict[str, Any]  # the original tokenizer.json
    options: dict[str, Any] | None  # the student's options; None for a plain backbone
    prefixes: list[str]  # input prefixes, first the one the student's texts get
    corpus_ids: list[list[int]]  # original ids of each corpus text, tokenised as the student does
    required: dict[int, str]  # ids every trimmed vocabulary keeps (`required_ids`)
    kept: list[int]  # kept ids in their original order
    counts: dict[str, int]  # how many ids each reason kept
    top_n: int | None

    @property
    def prefix(self) -> str:
        return self.prefixes[0] if self.prefixes else ""


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
    src = source_folder(model, target, top_n, overwrite)
    eval_sets = evaluation_sets((languages or []) if eval_languages is None else eval_languages)
    texts, sources = read_corpus(languages, corpus)
    plan = plan_vocabulary(src, texts, top_n)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = outdir.partial_dir(target)
    try:
        report = write_checked(src, partial, plan, texts, sources, eval_sets)
        outdir.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    warn_uncovered(report["coverage"])
    print(f"distill trim -> {target}\n\n{markdown(report)}")
    return report


def source_folder(model: str, target: Path, top_n: int | None, overwrite: bool) -> Path:
    """The model's local folder, once `--out` and `--top_n` are known to be usable.

    Raises:
        TrimError: `--out` is a folder trim did not write (or, without --overwrite, any existing folder), lies in the
            model folder, `top_n` is negative, or the model is not a local folder.
    """
    try:  # never replace a folder trim did not write
        outdir.check_out(target, TRIM_REPORT, "distill trim", overwrite)
    except outdir.OutDirError as err:
        raise TrimError(str(err)) from None
    if top_n is not None and top_n < 0:
        raise TrimError(f"top_n is {top_n}; expected a count >= 0 (or leave it out)")
    src = Path(resolve(model))
    if not src.is_dir():
        raise TrimError(f"model {model!r} resolved to {src}, which is not a local folder; trim needs the files")
    if target.resolve() == src.resolve() or src.resolve() in target.resolve().parents:
        raise TrimError(f"--out {target} is the model folder or inside it; write the trimmed model elsewhere")
    return src


def plan_vocabulary(src: Path, texts: list[str], top_n: int | None) -> Plan:
    """Tokenise the corpus as the model is used (with its input prefix) and choose the ids to keep."""
    options = student_options(src)
    prefixes = input_prefixes(src, options)
    tokenizer = load_tokenizer(src)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    config = json.loads((src / "config.json").read_text())
    required = required_ids(tokenizer, spec, config, src)
    backend = raw_backend(spec)
    # the student tokenises prefix + text, so the corpus is tokenised that way; other prefixes (e5's "passage: ")
    # are kept from their own tokens
    first = prefixes[0] if prefixes else ""
    corpus_ids = [e.ids for e in backend.encode_batch([first + t for t in texts], add_special_tokens=True)]
    prefix_ids = [e.ids for e in backend.encode_batch(prefixes, add_special_tokens=False)] if prefixes else []
    kept, counts = select_vocabulary(spec, corpus_ids + prefix_ids, required, top_n)
    return Plan(spec, options, prefixes, corpus_ids, required, kept, counts, top_n)


def write_checked(src: Path, partial: Path, plan: Plan, texts: list[str], sources: list[str],
                  eval_sets: dict[str, list[str]]) -> dict[str, Any]:
    """Write the trimmed folder into `partial`, check it against the original, measure coverage, and write the
    report (and a note on an exported model card); returns the report."""
    written = write_trimmed(src, partial, plan.spec, plan.kept, plan.required, plan.options)
    new_id = {old: new for new, old in enumerate(plan.kept)}
    step = max(1, len(texts) // CHECK_TEXTS)
    checks = check_trimmed(src, partial, plan.options, plan.prefix, texts,
                           [[new_id[i] for i in ids] for ids in plan.corpus_ids], texts[::step][:CHECK_TEXTS])
    coverage = measure_coverage(plan.spec, partial, new_id, eval_sets)
    report = {
        "model": str(src), "tokenizer": plan.spec["model"]["type"], "corpus": {"sources": sources, "texts": len(texts)},
        "prefixes": plan.prefixes, "top_n": plan.top_n, "kept": plan.counts,
        "vocab_size": {"before": written["vocab_before"], "after": written["vocab_after"]},
        "embedding_rows": {"before": written["rows_before"], "after": written["rows_after"]},
        "parameters": {"before": written["params_before"], "after": written["params_after"]},
        "size_bytes": {"before": written["bytes_before"], "after": folder_bytes(partial)},
        "dropped_files": written["dropped"], "checks": checks, "coverage": coverage,
    }
    for key in ("vocab_size", "parameters", "size_bytes"):
        report[key]["reduction"] = round(1 - report[key]["after"] / report[key]["before"], 4)
    (partial / TRIM_REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    card = partial / MODEL_CARD
    if card.is_file():  # an exported model card: its figures describe the untrimmed model
        card.write_text(card.read_text() + "\n## Vocabulary trimming\n\n" + markdown(report) + "\n\n"
                        f"Trimmed with `distill trim` (see `{TRIM_REPORT}`); figures above this section were measured "
                        f"before trimming.\n")
    return report


def student_options(folder: Path) -> dict[str, Any] | None:
    """A distill student's options (pooling, normalize, max_seq_length, prefix), or None for a plain backbone."""
    path = folder / STUDENT_CONFIG
    return json.loads(path.read_text()) if path.is_file() else None


def input_prefixes(folder: Path, options: dict[str, Any] | None) -> list[str]:
    """Prefixes the model is used with (first: the one its texts get): the student's, or those a prepared
    backbone records (e5: "query: ", "passage: "); their pieces are kept whatever the corpus holds."""
    found = [options["prefix"]] if options and options.get("prefix") else []
    path = folder / BACKBONE_MARKER
    if path.is_file():
        usage = json.loads(path.read_text())
        found += [v for k, v in usage.items() if k.endswith("prefix") and isinstance(v, str) and v]
    return list(dict.fromkeys(found))


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
    backend = raw_backend(json.loads(trimmed.backend_tokenizer.to_str()))
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
