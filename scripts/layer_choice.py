"""Which encoder layers a shallower student should leave out: zero-shot STS-B dev Spearman of a backbone with each
candidate set of layers removed, side by side with all layers kept.

A student built with `keep_layers` (students.BiEncoder) starts from the backbone's remaining layers; the candidate
that hurts the zero-shot backbone least on dev is the one to distil (configs/frontier/e5-11.yaml and e5-10.yaml
were chosen this way). Dev only: the test split plays no part in the choice.

    python scripts/layer_choice.py multilingual-e5-small --prefix "query: "              # each single layer
    python scripts/layer_choice.py multilingual-e5-small --prefix "query: " --drop 2,7 3,6   # given sets
    # writes runs/layer-choice/<backbone>/report.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from distill import catalog
from distill.evaluation import markdown_table
from distill.machine import bf16_reason, describe, machine
from students.bi_encoder import BiEncoder


def dev_spearman(model: BiEncoder, a: list[str], b: list[str], gold: list[float], batch_size: int = 64) -> float:
    """Cosine Spearman on the pairs, each distinct sentence encoded once (length-sorted)."""
    from scipy.stats import spearmanr

    texts = list(dict.fromkeys(a + b))
    index = {t: i for i, t in enumerate(texts)}
    # bf16 where the CPU has it natively (~3x faster); emulated bf16 is slower than fp32 (distill.machine)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_reason() is None):
        emb = model.encode(texts, batch_size=batch_size)
    cos = torch.nn.functional.cosine_similarity(emb[[index[t] for t in a]], emb[[index[t] for t in b]])
    return round(float(spearmanr(cos.numpy(), gold).statistic), 4)


def candidates(depth: int, drop: list[str] | None) -> list[list[int]]:
    """The layer sets to leave out: the given ones (`2,7`), or every single layer; refused when out of range."""
    sets = [[int(x) for x in d.split(",")] for d in drop] if drop else [[i] for i in range(depth)]
    for s in sets:
        if not s or any(not 0 <= i < depth for i in s) or len(set(s)) == depth:
            raise SystemExit(f"--drop {','.join(map(str, s))}: layers are 0..{depth - 1} and at least one must stay")
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", help="a short name (multilingual-e5-small), local folder or hub id")
    parser.add_argument("--prefix", default="", help="prepended to every text (e5: 'query: ')")
    parser.add_argument("--drop", nargs="*", default=None, help="layer sets to leave out, e.g. 7 or 2,7 (0-based)")
    parser.add_argument("--max_pairs", type=int, default=None, help="the first N dev pairs (a quick look)")
    parser.add_argument("--out", type=Path, default=None, help="default runs/layer-choice/<backbone>")
    args = parser.parse_args()
    out = args.out or Path("runs/layer-choice") / Path(args.backbone).name
    out.mkdir(parents=True, exist_ok=True)
    rows = catalog.load("stsb/dev").rows.with_format("arrow")
    a, b = rows["text_a"].to_pylist(), rows["text_b"].to_pylist()
    gold = [float(x) for x in rows["label"].to_pylist()]
    if args.max_pairs:
        a, b, gold = a[:args.max_pairs], b[:args.max_pairs], gold[:args.max_pairs]
    depth = BiEncoder(args.backbone).depth
    sets = candidates(depth, args.drop)
    table = []
    for left_out in tqdm([None, *sets], desc="layer sets", unit="set"):
        keep = None if left_out is None else [i for i in range(depth) if i not in left_out]
        start = time.perf_counter()
        model = BiEncoder(args.backbone, prefix=args.prefix, keep_layers=keep).eval()
        table.append({"left out": "none" if left_out is None else ",".join(map(str, left_out)),
                      "layers": depth - len(left_out or []), "STS-B dev": dev_spearman(model, a, b, gold),
                      "s": round(time.perf_counter() - start, 1)})
    table = [table[0], *sorted(table[1:], key=lambda r: -r["STS-B dev"])]
    options = [*(["--prefix", repr(args.prefix)] if args.prefix else []),
               *(["--drop", *args.drop] if args.drop else []),
               *(["--max_pairs", str(args.max_pairs)] if args.max_pairs else [])]
    command = " ".join(["python scripts/layer_choice.py", args.backbone, *options])
    report = {"machine": machine(), "command": command, "pairs": len(a), "rows": table}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = (f"# Layers to leave out of {args.backbone} (zero-shot STS-B dev Spearman, cosine, {len(a):,} pairs)\n\n"
            f"Machine: {describe(report['machine'])}. Command: `{command}`.\n\n" + markdown_table(table) + "\n")
    (out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
