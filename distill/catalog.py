"""The data catalog: one name per public data set, read from a local folder or the Hugging Face Hub.

A name such as `stsb/train`, `stsb_multi_mt/de/test`, `tatoeba/deu`, `flores200/deu_Latn/dev`, `xquad/de`,
`squad_dev` or `scifact/test` resolves, in this order, to
(a) the set's folder under the data root (`DISTILL_DATA`; default `../shared/data` from the current folder
    when it exists, else beside the source checkout distill was installed from, else `~/.cache/distill/data`),
(b) the set's Hub id through `datasets.load_dataset` (cached by `datasets`).
Public data sets are never part of the package (DESIGN.md "Where data comes from").

Each entry gives the rows DESIGN.md names (`Entry.rows`):
- pairs: a `Dataset` (`text_a`, `text_b`, `label`) and `label_range`;
- parallel: a `Dataset` (`source` in English, `translation`, `lang`);
- retrieval: a `DatasetDict` of `queries` (`query_id`, `text`, `answers`), `corpus` (`doc_id`, `title`, `text`) and
  `qrels` (`query_id`, `doc_id`, `relevance`).
Names keep each set's native language codes; `iso()` turns them into the ISO 639-1 codes of metric keys.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from distill.catalog_formats import (  # noqa: F401 - CatalogError is part of the catalog's API
    CatalogError,
    _beir,
    _challenge_pair,
    _lines,
    _parallel,
    _squad,
    _stsb,
    _stsb_mt,
)
from distill.languages import (
    FLORES_CODES,
    STSB_LANGUAGES,
    TATOEBA_CHALLENGE_CODES,
    TATOEBA_CODES,
    XQUAD_LANGUAGES,
    iso,
)


@dataclass(frozen=True)
class Entry:
    """A resolved catalog set: its rows, what they are, and where they came from."""

    name: str
    kind: str  # pairs | parallel | retrieval
    rows: Any  # Dataset (pairs, parallel) or DatasetDict (retrieval)
    licence: str
    origin: str  # the folder or file read, or `hf:<id>`
    label_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Spec:
    """How to read one set: its folder, its files, its Hub id and its licence."""

    kind: str
    folder: str
    files: Callable[[list[str]], list[str]]  # name parts -> files (relative to the set folder) that must exist
    read: Callable[[Path, list[str]], Any]
    hub: Callable[[list[str]], Any]
    hub_id: str
    licence: str
    label_range: tuple[float, float] | None = None


def data_root() -> Path:
    """The folder of local data sets (`DISTILL_DATA`, else `../shared/data` beside here or the checkout)."""
    if os.environ.get("DISTILL_DATA"):
        return Path(os.environ["DISTILL_DATA"]).expanduser()
    here = Path.cwd() / ".." / "shared" / "data"
    if here.is_dir():
        return here.resolve()
    for source in (installed_from(), Path(__file__).resolve().parents[1]):  # the checkout, however installed
        if source is not None and (source.parent / "shared" / "data").is_dir():
            return (source.parent / "shared" / "data").resolve()
    return Path.home() / ".cache" / "distill" / "data"


def installed_from() -> Path | None:
    """The source folder pip installed distill from (`direct_url.json`, PEP 610), editable or not."""
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    try:
        url = json.loads(metadata.distribution("distill").read_text("direct_url.json") or "{}").get("url", "")
    except (metadata.PackageNotFoundError, json.JSONDecodeError):
        return None
    return Path(unquote(urlparse(url).path)) if url.startswith("file://") else None


# ------------------------------------------------------------------------------------------- Hub readers


def _load_hub(hub_id: str, config: str | None, split: str) -> Dataset:
    from datasets import load_dataset  # the Hub route: cached by `datasets`, offline here

    return load_dataset(hub_id, config, split=split)


def _hub_pairs(hub_id: str, config: str | None, split: str, a: str, b: str, label: str) -> Dataset:
    rows = _load_hub(hub_id, config, split)
    return Dataset.from_dict({"text_a": rows[a], "text_b": rows[b], "label": [float(x) for x in rows[label]]})


def _hub_squad(hub_id: str, config: str | None, split: str) -> DatasetDict:
    rows = _load_hub(hub_id, config, split)
    articles: dict[str, dict[str, list]] = {}
    for r in rows:  # the Hub's flat rows back into articles -> paragraphs -> questions, in order
        paragraphs = articles.setdefault(r["title"], {})
        paragraphs.setdefault(r["context"], []).append(
            {"id": r["id"], "question": r["question"],
             "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"],
                                                                         r["answers"]["answer_start"])]})
    payload = {"data": [{"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in ps.items()]}
                        for t, ps in articles.items()]}
    return _squad_payload(payload)


def _squad_payload(payload: dict) -> DatasetDict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "squad.json"
        path.write_text(json.dumps(payload), encoding="utf-8")
        return _squad(path)


def _hub_beir(split: str) -> DatasetDict:
    corpus = _load_hub("BeIR/scifact", "corpus", "corpus")
    queries = _load_hub("BeIR/scifact", "queries", "queries")
    qrels = _load_hub("BeIR/scifact-qrels", None, split)
    judged = {str(x) for x in qrels["query-id"]}
    keep = [i for i, q in enumerate(queries["_id"]) if str(q) in judged]
    return DatasetDict(
        queries=Dataset.from_dict({"query_id": [str(queries["_id"][i]) for i in keep],
                                   "text": [queries["text"][i] for i in keep]}),
        corpus=Dataset.from_dict({"doc_id": [str(x) for x in corpus["_id"]], "title": corpus["title"],
                                  "text": corpus["text"]}),
        qrels=Dataset.from_dict({"query_id": [str(x) for x in qrels["query-id"]],
                                 "doc_id": [str(x) for x in qrels["corpus-id"]],
                                 "relevance": [int(x) for x in qrels["score"]]}))


def _hub_flores(code: str, split: str) -> Dataset:
    english = _load_hub("openlanguagedata/flores_plus", "eng_Latn", split)["text"]
    return _parallel(english, _load_hub("openlanguagedata/flores_plus", code, split)["text"], code,
                     f"hf:openlanguagedata/flores_plus:{code}:{split}")


def _hub_tatoeba(code: str) -> Dataset:
    rows = _load_hub("mteb/tatoeba-bitext-mining", f"{code}-eng", "test")
    return _parallel(rows["sentence2"], rows["sentence1"], code, f"hf:mteb/tatoeba-bitext-mining:{code}-eng")


def _hub_challenge(code: str) -> Dataset:
    pair = _challenge_pair(code)
    rows = _load_hub("Helsinki-NLP/tatoeba_mt", pair, "test")
    english, other = ("sourceString", "targetString") if pair.startswith("eng") else ("targetString", "sourceString")
    return _parallel(rows[english], rows[other], code, f"hf:Helsinki-NLP/tatoeba_mt:{pair}")


# ------------------------------------------------------------------------------------------------ the sets

STS_LICENCE = "STS Benchmark: scores CC BY-SA 4.0; texts under the terms of their sources (see its LICENSE.txt)"
SPLITS = ("train", "dev", "test")
HUB_SPLIT = {"train": "train", "dev": "validation", "test": "test"}

CATALOG: dict[str, Spec] = {
    "stsb": Spec("pairs", "stsbenchmark", lambda p: [f"sts-{p[0]}.csv"], lambda d, p: _stsb(d / f"sts-{p[0]}.csv"),
                 # the Hub copy has scores already in [0, 1]: its label_range says so (see `Entry.label_range`)
                 lambda p: _hub_pairs("sentence-transformers/stsb", None, HUB_SPLIT[p[0]], "sentence1", "sentence2",
                                      "score"),
                 "sentence-transformers/stsb", STS_LICENCE, (0.0, 5.0)),
    "stsb_multi_mt": Spec("pairs", "stsb_multi_mt", lambda p: [f"stsb-{p[0]}-{p[1]}.csv"],
                          lambda d, p: _stsb_mt(d / f"stsb-{p[0]}-{p[1]}.csv"),
                          lambda p: _hub_pairs("PhilipMay/stsb_multi_mt", p[0], p[1], "sentence1", "sentence2",
                                               "similarity_score"),
                          "PhilipMay/stsb_multi_mt", "STSb Multi MT (DeepL translations of STS-B): same terms as "
                          "STS-B, scores CC BY-SA 4.0", (0.0, 5.0)),
    "tatoeba": Spec("parallel", "tatoeba", lambda p: [f"tatoeba.{p[0]}-eng.{p[0]}", f"tatoeba.{p[0]}-eng.eng"],
                    lambda d, p: _parallel(_lines(d / f"tatoeba.{p[0]}-eng.eng"),
                                           _lines(d / f"tatoeba.{p[0]}-eng.{p[0]}"), p[0], str(d)),
                    lambda p: _hub_tatoeba(p[0]), "mteb/tatoeba-bitext-mining",
                    "Tatoeba test set (LASER): CC BY 2.0 FR"),
    "tatoeba_challenge": Spec(
        "parallel", "tatoeba_challenge",
        lambda p: [f"{_challenge_pair(p[0])}/tatoeba-test-v2021-08-07.{c}" for c in (p[0], "eng")],
        lambda d, p: _parallel(_lines(d / _challenge_pair(p[0]) / "tatoeba-test-v2021-08-07.eng"),
                               _lines(d / _challenge_pair(p[0]) / f"tatoeba-test-v2021-08-07.{p[0]}"), p[0], str(d)),
        lambda p: _hub_challenge(p[0]), "Helsinki-NLP/tatoeba_mt", "Tatoeba Translation Challenge v2021-08-07: "
        "CC BY 2.0 FR"),
    "flores200": Spec("parallel", "flores200", lambda p: [f"{p[1]}/{c}.{p[1]}" for c in (p[0], "eng_Latn")],
                      lambda d, p: _parallel(_lines(d / p[1] / f"eng_Latn.{p[1]}"), _lines(d / p[1] / f"{p[0]}.{p[1]}"),
                                             p[0], str(d / p[1])),
                      lambda p: _hub_flores(p[0], p[1]), "openlanguagedata/flores_plus", "FLORES-200: CC BY-SA 4.0"),
    "xquad": Spec("retrieval", "xquad", lambda p: [f"xquad.{p[0]}.json"], lambda d, p: _squad(d / f"xquad.{p[0]}.json"),
                  lambda p: _hub_squad("google/xquad", f"xquad.{p[0]}", "validation"), "google/xquad",
                  "XQuAD: CC BY-SA 4.0"),
    "squad_dev": Spec("retrieval", "squad_dev", lambda p: ["dev-v1.1.reconstructed.json"],
                      lambda d, p: _squad(d / "dev-v1.1.reconstructed.json"),
                      lambda p: _hub_squad("rajpurkar/squad", None, "validation"), "rajpurkar/squad",
                      "SQuAD v1.1 dev: CC BY-SA 4.0"),
    "scifact": Spec("retrieval", "beir_scifact", lambda p: ["corpus.jsonl", "queries.jsonl", f"qrels/{p[0]}.tsv"],
                    lambda d, p: _beir(d, p[0]), lambda p: _hub_beir(p[0]), "BeIR/scifact",
                    "BEIR SciFact: CC BY 4.0 (corpus ODC-By)"),
}

#: the name parts each set takes, with their allowed values
PARTS: dict[str, list[tuple[str, ...]]] = {
    "stsb": [SPLITS],
    "stsb_multi_mt": [STSB_LANGUAGES, SPLITS],
    "tatoeba": [TATOEBA_CODES],
    "tatoeba_challenge": [TATOEBA_CHALLENGE_CODES],
    "flores200": [FLORES_CODES, ("dev", "devtest")],
    "xquad": [XQUAD_LANGUAGES],
    "squad_dev": [],
    "scifact": [("train", "test")],
}


def names() -> list[str]:
    """Every name the catalog resolves."""
    out = []
    for dataset, parts in PARTS.items():
        combos: list[list[str]] = [[]]
        for allowed in parts:
            combos = [c + [v] for c in combos for v in allowed]
        out += ["/".join([dataset, *c]) for c in combos]
    return out


def is_name(source: str) -> bool:
    """Whether `source` is meant as a catalog name: no such file, not `hf:`, and a catalog set's first part or
    no file suffix (so a mistyped name gets the catalog's close matches, not "no such file")."""
    if source.startswith("hf:") or Path(source).exists():
        return False
    return source.split("/")[0] in CATALOG or not Path(source).suffix


def _parse(name: str) -> tuple[str, list[str]]:
    dataset, *parts = name.split("/")
    allowed = PARTS.get(dataset)
    if allowed is None or len(parts) != len(allowed) or any(p not in a for p, a in zip(parts, allowed)):
        close = difflib.get_close_matches(name, names(), n=4, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else f"sets: {', '.join(_patterns())}"
        raise CatalogError(f"unknown data set {name!r}; {hint} (or give a file path, or "
                           f"hf:<hub id>[:<config>]:<split>)")
    return dataset, parts


def _patterns() -> list[str]:
    """`flores200/<afr_Latn|amh_Ethi|…>/<dev|devtest>`-style patterns of every set, for error messages."""
    def part(allowed: tuple[str, ...]) -> str:
        return "<" + "|".join(allowed[:3]) + ("|…" if len(allowed) > 3 else "") + ">"

    return ["/".join([dataset, *(part(a) for a in parts)]) for dataset, parts in PARTS.items()]


def read_local(name: str, root: Path) -> Entry:
    """A catalog set read from the data folder `root` (its layout under `root/<set folder>/`), never the Hub.

    Raises:
        CatalogError: an unknown name, or a set folder that is missing, lacks a file or holds another layout.
    """
    dataset, parts = _parse(name)
    spec = CATALOG[dataset]
    folder = root / spec.folder
    missing = [f for f in spec.files(parts) if not (folder / f).is_file()]
    if missing:
        raise CatalogError(f"{name}: {folder / missing[0]} is missing; the folder {folder} is incomplete: restore "
                           f"it, or point DISTILL_DATA at a complete copy")
    return Entry(name, spec.kind, spec.read(folder, parts), spec.licence, str(folder), spec.label_range)


def texts(name: str) -> list[str]:
    """Every sentence of a pairs or parallel set (both sides, file order): a corpus or a sentence pool."""
    entry = load(name)
    if entry.kind == "retrieval":
        raise CatalogError(f"{name} is a retrieval set; give pairs, parallel text or a file here")
    a, b = ("text_a", "text_b") if entry.kind == "pairs" else ("source", "translation")
    table = entry.rows.with_format("arrow")  # whole columns at once (`rows[a]` iterates row by row)
    return table[a].to_pylist() + table[b].to_pylist()


@lru_cache(maxsize=64)
def _load(name: str, root: str) -> Entry:
    dataset, parts = _parse(name)
    spec = CATALOG[dataset]
    folder = Path(root) / spec.folder
    if folder.is_dir():  # (a) the local folder: every file of the set must be there
        return read_local(name, Path(root))
    try:  # (b) the Hub, cached by `datasets`
        rows = spec.hub(parts)
    except CatalogError:
        raise
    except Exception as err:  # noqa: BLE001 - offline, gated or renamed: one line, whatever datasets raises
        raise CatalogError(
            f"{name}: no folder {folder} (DISTILL_DATA={os.environ.get('DISTILL_DATA', '<unset>')}) and the Hub "
            f"set {spec.hub_id} could not be loaded ({type(err).__name__}); set DISTILL_DATA to a folder holding "
            f"{spec.folder}/, or go online") from None
    label_range = (0.0, 1.0) if dataset == "stsb" else spec.label_range  # the Hub copy's scores are in [0, 1]
    return Entry(name, spec.kind, rows, spec.licence, f"hf:{spec.hub_id}", label_range)


def load(name: str) -> Entry:
    """Resolve a catalog name to its rows (local folder first, then the Hub); see the module docstring.

    Raises:
        CatalogError: an unknown name (with close matches), a set folder missing a file or in another layout,
            or neither route available (names the folder, the Hub id and `DISTILL_DATA`).
    """
    return _load(name, str(data_root()))


def load_hf(source: str) -> Dataset:
    """`hf:<hub id>[:<config>]:<split>` -> the rows of that Hub set, through `datasets.load_dataset`."""
    parts = source[len("hf:"):].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise CatalogError(f"{source!r}: expected hf:<hub id>[:<config>]:<split>, e.g. hf:sentence-transformers/stsb:"
                           f"train")
    hub_id, config, split = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]
    try:
        return _load_hub(hub_id, config, split)
    except Exception as err:  # noqa: BLE001 - offline, gated or unknown: one line
        raise CatalogError(f"{source}: the Hub set {hub_id} could not be loaded ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:120] if str(err) else ''}); go online, or download it and "
                           f"give the file path instead") from None


def licence(source: str) -> str:
    """The licence of a data source: a catalog set's, else a note that the file's own terms apply."""
    if is_name(source):
        return CATALOG[source.split("/")[0]].licence
    if source.startswith("hf:"):
        return f"see the Hub card of {source[3:].split(':')[0]}"
    return f"{source}: a local file; its own terms apply"


#: ISO 639-1 -> the Tatoeba (LASER) file code, from the one language table; Tatoeba codes are accepted as they are
TATOEBA_BY_ISO = {iso(code): code for code in reversed(TATOEBA_CODES) if iso(code) != code}


def tatoeba_code(lang: str) -> str:
    """ISO 639-1 (`de`) or Tatoeba code (`deu`) -> the file code of the catalog's `tatoeba/<code>`; unknown codes
    are a `CatalogError` with the close matches."""
    code = TATOEBA_BY_ISO.get(lang, lang)
    if code not in TATOEBA_CODES:
        close = difflib.get_close_matches(lang, [*TATOEBA_BY_ISO, *TATOEBA_CODES], n=4, cutoff=0.5)
        raise CatalogError(f"tatoeba: unknown language code {lang!r}"
                           f"{'; close matches: ' + ', '.join(close) if close else ''}; use an ISO 639-1 code "
                           f"({', '.join(TATOEBA_BY_ISO)}) or one of the {len(TATOEBA_CODES)} Tatoeba codes "
                           f"({', '.join(TATOEBA_CODES[:8])}, ...)")
    return code


def read_tatoeba(lang: str) -> tuple[list[str], list[str]]:
    """(sentences in `lang`, their English translations), line-aligned: the LASER Tatoeba test set (catalog
    `tatoeba/<code>`, <= 1000 lines), read by `distill test`'s Tatoeba evaluation, `distill bench` and `trim`."""
    rows = load(f"tatoeba/{tatoeba_code(lang)}").rows
    return list(rows["translation"]), list(rows["source"])
