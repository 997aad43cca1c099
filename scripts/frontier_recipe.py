"""The speed/accuracy frontier (issue 19): shallower, 2D-Matryoshka and static students from one teacher, exported,
served and benched side by side with the sentence-transformers models a user would pick instead.

Stages (each timed into runs/frontier/report.json; a killed run resumes where it stopped):
1. the strong cross-encoder and its STS-B train cache (shared with the other recipes; a small MiniLM one in smoke),
   and 5,000 AugSBERT silver pairs for the reference (mined from STS-B train sentences, scored by that teacher);
2. students from configs/frontier/: `layers-6` (the reference, on STS-B train + the silver pairs, exported at
   once), `layers-3`, `layers-2` (keep_layers), `dims-256`, `dims-128`, `matryoshka` (one run, seven (layers, dims)
   points), then `static` (token vectors of the exported reference, fine-tuned). All fit the same cached teacher
   scores; the shallow, Matryoshka and static students also learn the exported reference's vectors of a
   ~30,000-sentence pool (configs/frontier/pool.yaml:
   embedding-level distillation, as sentence-transformers reduces layers and model2vec's tokenlearn fits tables);
3. every student exported (`distill export`, ONNX int8 where the width is whole; the Matryoshka run at each of its
   points with --layers/--dims);
4. for every exported folder and backend, and for the peers: STS-B test Spearman (cosine, whole test set) and
   encode throughput (sentences/s over the STS-B test sentences, interleaved repeats);
5. `distill bench` over all of them and the peers (1 query vs 1,000 candidates), whose report.json gains the
   frontier fields per row (`variant`, `stsb_test_spearman`, `queries_per_s_1v1000`, `encode_sentences_per_s`,
   `size_mb`, `export_path`), a Pareto flag, report.md and pareto.png; docs/frontier-report.md is its copy.

`--extra e5 e5-11 e5-10` adds students of another backbone, multilingual-e5-small (configs/frontier/e5.yaml: 12
layers; e5-11.yaml and e5-10.yaml: 11 and 10 of them), served int8, trained on the reference's data after the default
students: about 25, 24 and 22 min more (the time cap grows by as much). `--only_extra` trains and benches the extra
students alone beside the peers (teacher, cache and silver pairs still built), in runs/frontier-extra, copied to
docs/frontier-extra-report.md.

    nice -n 19 python scripts/frontier_recipe.py          # about 90 min on 2 quiet CPU cores (teacher included)
    nice -n 19 python scripts/frontier_recipe.py --extra e5 e5-10
    nice -n 19 python scripts/frontier_recipe.py --extra e5-11 --only_extra   # about an hour
    python scripts/frontier_recipe.py --smoke             # every stage on 64 pairs, for CI
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from distill.machine import describe
from distill.recipe import (
    QUIET,
    STRONG_CACHE,
    Recipe,
    TimeCapReached,
    cache_complete,
    close_recipe,
    open_recipe,
    recipe_arguments,
    run_verb,
    teacher_and_cache,
)

ROOT = Path(__file__).resolve().parents[1]
CAP_MIN = 90  # the all-in time cap, minutes (issue 19)
BASE = ["--config", "configs/frontier/student.yaml"]
SMOKE = ["--config", "configs/frontier/smoke.yaml"]
REFERENCE = "layers-6"
#: variant -> overlays on BASE; those with `pool` also learn the exported reference's vectors of a sentence pool
VARIANTS = {REFERENCE: ["silver"], "layers-3": ["layers-3", "pool"], "layers-2": ["layers-2", "pool"],
            "dims-256": ["dims-256"], "dims-128": ["dims-128"], "matryoshka": ["pool", "pool-matryoshka"]}
STATIC = ["static", "pool", "static-pool"]
#: opt-in students (`--extra`), on the reference's data (STS-B train + silver pairs), and the minutes each adds
EXTRA = {"e5": ["silver", "e5"], "e5-11": ["silver", "e5", "e5-11"], "e5-10": ["silver", "e5", "e5-10"]}
EXTRA_MIN = {"e5": 25, "e5-11": 24, "e5-10": 22}
#: `--only_extra`: the teacher, its cache, the silver pairs, accuracy and bench, without the default students
ONLY_EXTRA_BASE_MIN = 35
#: the Matryoshka run's points (layers, dims) and the separately trained student at the same point
POINTS = {(6, 384): "layers-6", (6, 256): "dims-256", (6, 128): "dims-128", (3, 384): "layers-3", (3, 128): None,
          (2, 384): "layers-2", (2, 64): None}
PEERS = ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
SMOKE_PEERS = PEERS[:1]  # mpnet alone would take a smoke run's minutes
N_CANDIDATES = {False: 1000, True: 100}  # 1 query vs N pre-encoded candidates (smoke: fewer)
BACKENDS = ["torch-fp32", "onnx-int8"]
ST_DISTILLED = 0.8544  # sentence-transformers' own distilled MiniLM-L6 here (ANCHORS.md)
SILVER_PAIRS = {False: 5000, True: 64}  # the reference's teacher-scored silver pairs (configs/frontier/silver.yaml)


def overlays(names: list[str], smoke: bool) -> list[str]:
    return [*BASE, *(a for n in names for a in ("--config", f"configs/frontier/{n}.yaml")), *(SMOKE if smoke else [])]


def fit(out: Path, name: str, config: list[str], extra: list[str]) -> dict[str, Any]:
    folder = out / name
    start = time.perf_counter()
    done = run_verb(["fit", *config, f"--trainer.default_root_dir={folder}",
                     f"--trainer.logger.init_args.save_dir={folder}", *QUIET, *extra])
    cb = done.trainer.checkpoint_callback
    result = {"checkpoint": os.path.relpath(cb.best_model_path, ROOT),
              "dev_spearman": round(float(cb.best_model_score), 4), "fit_s": round(time.perf_counter() - start, 1)}
    points = dev_points(Path(done.trainer.logger.log_dir) / "metrics.csv")
    return {**result, "dev_points": points} if points else result


def dev_points(metrics_csv: Path) -> dict[str, float]:
    """A Matryoshka run's per-point dev Spearman (`val/spearman_cosine/<layers>x<dims>`) at the validation that
    selected its checkpoint (the best val/spearman row of the CSV log); empty for other students."""
    import pandas as pd

    if not metrics_csv.is_file():
        return {}
    frame = pd.read_csv(metrics_csv)
    keys = [c for c in frame.columns if re.fullmatch(r"val/spearman_cosine/\d+x\d+", c)]
    rows = frame.dropna(subset=["val/spearman"]) if "val/spearman" in frame else frame.iloc[:0]
    if not keys or rows.empty:
        return {}
    best = rows.loc[rows["val/spearman"].idxmax()]
    return {k.rsplit("/", 1)[1]: round(float(best[k]), 4) for k in keys}


def export(ckpt: str, folder: Path, layers: int | None = None, dims: int | None = None,
           onnx: bool = True) -> dict[str, Any]:
    """One exported folder; ONNX int8 beside torch unless the point's width is cut (ST slices it, ONNX cannot)."""
    from distill.export import ExportError

    args = ["export", "--ckpt", str(ROOT / ckpt), "--out", str(folder), "--overwrite", "true"]
    args += [f"--layers={layers}"] if layers else []
    args += [f"--dims={dims}"] if dims else []
    refused = None
    try:
        run_verb(args + (["--onnx", "true", "--int8", "true"] if onnx else []))
    except ExportError as err:  # int8 moved STS-B dev beyond its limit: served without it, and the row says why
        if not onnx or "int8" not in str(err):
            raise
        refused = str(err)
        run_verb(args + ["--onnx", "true"])
    return {"folder": os.path.relpath(folder, ROOT), "onnx": onnx, "int8": onnx and refused is None,
            "int8_refused": refused}


def silver(recipe: Recipe, out: Path, teacher: str, smoke: bool) -> tuple[Path, Path]:
    """The reference's AugSBERT silver pairs (mined from STS-B train sentences by the zero-shot MiniLM-L6) and the
    teacher's cache of them; in smoke, from 128 train pairs' sentences and scored by the smoke's teacher."""
    from distill import catalog

    folder = out / "silver"
    pairs, cache = folder / "pairs.parquet", folder / "cache"
    sentences = "stsb/train"
    if smoke:  # the whole train set would cost the smoke ~45 s of encoding
        folder.mkdir(parents=True, exist_ok=True)
        sentences = str(folder / "sentences.parquet")
        catalog.load("stsb/train").rows.select(range(128)).to_pandas()[["text_a", "text_b"]].to_parquet(sentences)
    recipe.stage("mine_silver", lambda: run_verb([
        "mine", "--config", "configs/mine/silver.yaml", f"--sentences=[{sentences}]", f"--out={pairs}",
        f"--max_pairs={SILVER_PAIRS[smoke]}"]))
    scorer = ["--config", "configs/cache/quickstart.yaml"] if smoke else STRONG_CACHE
    recipe.stage("cache_silver", lambda: run_verb([
        "cache", *scorer, "--config", "configs/cache/silver.yaml", f"--data.init_args.train={pairs}",
        f"--out={cache}", "--ckpt_path", teacher]), done=cache_complete(cache))
    return pairs, cache


def stsb_texts(smoke: bool) -> tuple[list[str], list[str], list[float]]:
    from distill import catalog

    rows = catalog.load("stsb/test").rows.with_format("arrow")  # whole columns at once
    n = 64 if smoke else len(rows)
    a, b, label = (rows[c].to_pylist()[:n] for c in ("text_a", "text_b", "label"))
    return a, b, [float(x) for x in label]


def encoders(exports: dict[str, dict[str, Any]], peers: list[str]) -> dict[tuple[str, str], Any]:
    """(variant, backend) -> encode(texts) for every exported folder on every backend it has, and the peers."""
    from distill import backbones, names, serving

    out: dict[tuple[str, str], Any] = {}
    for variant, info in exports.items():
        folder = ROOT / info["folder"]
        for backend in BACKENDS:
            if backend == "onnx-int8" and not (folder / names.INT8_FILE).is_file():  # refused, or not asked
                continue
            server = serving.load(folder, backend, threads=2)
            out[(variant, backend)] = server.encode
    from sentence_transformers import SentenceTransformer

    for peer in peers:
        model = SentenceTransformer(backbones.resolve(peer), device="cpu")
        out[(peer, "sentence-transformers")] = lambda t, m=model: m.encode(t, batch_size=32, convert_to_tensor=True)
    return out


def accuracy_and_speed(exports: dict[str, dict[str, Any]], smoke: bool, repeats: int) -> dict[str, dict[str, Any]]:
    """STS-B test Spearman (cosine) and encode sentences/s of every (variant, backend), timed interleaved."""
    from scipy.stats import spearmanr

    a, b, gold = stsb_texts(smoke)
    pool = list(dict.fromkeys(a + b))[:1000]  # timing: 1,000 distinct test sentences (accuracy: the whole test set)
    models = encoders(exports, SMOKE_PEERS if smoke else PEERS)
    figures: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {f"{v}|{k}": [] for v, k in models}
    for (variant, backend), encode in models.items():
        u, v = encode(a).float(), encode(b).float()
        cos = torch.nn.functional.cosine_similarity(u, v).numpy()
        figures[f"{variant}|{backend}"] = {"stsb_test_spearman": round(float(spearmanr(cos, gold).statistic), 4)}
    for _ in range(repeats):  # interleaved: every model sees the same machine state, round after round
        for (variant, backend), encode in models.items():
            start = time.perf_counter()
            encode(pool)
            times[f"{variant}|{backend}"].append(time.perf_counter() - start)
    for key, seconds in times.items():
        rates = [len(pool) / s for s in seconds]
        figures[key].update(encode_sentences_per_s=round(statistics.median(rates), 1),
                            encode_spread=[round(min(rates), 1), round(max(rates), 1)], encode_texts=len(pool))
    return figures


def bench(out: Path, exports: dict[str, dict[str, Any]], smoke: bool) -> dict[str, Any]:
    students = [str(ROOT / info["folder"]) for info in exports.values()]
    folder = out / "bench"
    run_verb(["bench", "--students", json.dumps(students), "--out", str(folder), "--backends", json.dumps(BACKENDS),
              "--regimes", '["one-vs-n"]', "--n_candidates", f"[{N_CANDIDATES[smoke]}]",
              "--queries", "5" if smoke else "40", "--repeats", "1" if smoke else "5", "--threads", "2",
              "--baselines", "false", "--peers", json.dumps(SMOKE_PEERS if smoke else PEERS),
              "--update_cards", "false"])
    return {"report": os.path.relpath(folder / "report.json", ROOT)}


# -------------------------------------------------------------------------------------- the frontier table


def frontier_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The bench's 1-vs-N rows (students by folder order, peers by name), with the frontier fields."""
    from distill.pareto import pareto_front

    bench = json.loads((ROOT / report["bench"]["report"]).read_text())
    variants = list(report["exports"])
    figures = report["figures"]
    rows = []
    n = N_CANDIDATES[bool(report.get("smoke"))]
    for row in bench["rows"]:
        if row.get("regime") != "one-vs-n" or row.get("n_candidates") != n or row.get("mode") not in (None, "cosine"):
            continue
        if row["role"] == "student":
            index = 0 if row["model"] == "student" else int(row["model"].rsplit("-", 1)[1]) - 1
            variant, backend = variants[index], row["backend"]
            path = report["exports"][variant]["folder"]
        elif row["role"] == "peer":
            variant, backend, path = row["model"], "sentence-transformers", row["model"]
        else:
            continue
        extra = figures.get(f"{variant}|{backend}", {})
        rows.append({**row, "variant": variant, "stsb_test_spearman": extra.get("stsb_test_spearman"),
                     "queries_per_s_1v1000": row.get("throughput"),
                     "encode_sentences_per_s": extra.get("encode_sentences_per_s"),
                     "encode_spread": extra.get("encode_spread"), "size_mb": row.get("size_mb"), "export_path": path})
    return pareto_front(rows, "queries_per_s_1v1000", "stsb_test_spearman")


def targets(rows: list[dict[str, Any]], figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    def peer(name: str) -> dict[str, Any]:
        return next((r for r in rows if r["variant"] == name), {})

    mini, mpnet = peer("all-MiniLM-L6-v2"), peer("all-mpnet-base-v2")
    ours = [r for r in rows if r["role"] == "student" and r["stsb_test_spearman"] is not None]
    out: dict[str, dict[str, Any]] = {}

    def best(pred: Any, key: str) -> dict[str, Any] | None:
        found = [r for r in ours if pred(r)]
        return max(found, key=lambda r: r[key] or 0) if found else None

    if mini.get("queries_per_s_1v1000"):
        r = best(lambda r: r["stsb_test_spearman"] >= ST_DISTILLED, "queries_per_s_1v1000")
        ratio = r and round(r["queries_per_s_1v1000"] / mini["queries_per_s_1v1000"], 2)
        out[f"STS-B >= {ST_DISTILLED} at >= 3x all-MiniLM-L6-v2's 1v1000 queries/s"] = {
            "value": ratio, "bound": 3.0, "met": ratio is not None and ratio >= 3.0,
            "row": r and f"{r['variant']} {r['backend']} ({r['stsb_test_spearman']})"}
    if mpnet.get("queries_per_s_1v1000") and mpnet.get("stsb_test_spearman") is not None:
        r = best(lambda r: r["stsb_test_spearman"] >= mpnet["stsb_test_spearman"], "queries_per_s_1v1000")
        ratio = r and round(r["queries_per_s_1v1000"] / mpnet["queries_per_s_1v1000"], 2)
        out[f"STS-B >= all-mpnet-base-v2's ({mpnet['stsb_test_spearman']}) at >= 10x its 1v1000 queries/s"] = {
            "value": ratio, "bound": 10.0, "met": ratio is not None and ratio >= 10.0,
            "row": r and f"{r['variant']} {r['backend']} ({r['stsb_test_spearman']})"}
    static = figures.get("static|torch-fp32", {})
    mini_encode = figures.get("all-MiniLM-L6-v2|sentence-transformers", {}).get("encode_sentences_per_s")
    if static and mini_encode:
        ratio = round(static["encode_sentences_per_s"] / mini_encode, 1)
        out["static: STS-B >= 0.78"] = {"value": static["stsb_test_spearman"], "bound": 0.78,
                                        "met": static["stsb_test_spearman"] >= 0.78}
        out["static: >= 50x all-MiniLM-L6-v2's encode sentences/s"] = {"value": ratio, "bound": 50.0,
                                                                       "met": ratio >= 50.0}
    close = []
    for (layers, dims), alone in POINTS.items():
        point = figures.get(f"matryoshka-{layers}x{dims}|torch-fp32", {}).get("stsb_test_spearman")
        separate = figures.get(f"{alone}|torch-fp32", {}).get("stsb_test_spearman") if alone else None
        if point is not None and separate is not None:
            out[f"matryoshka ({layers}, {dims}) vs {alone} trained alone: |difference| <= 0.01"] = {
                "value": round(point - separate, 4), "bound": 0.01, "met": abs(point - separate) <= 0.01}
            close.append(abs(point - separate) <= 0.01)
    if close:  # an --only_extra run trains no Matryoshka student
        out["matryoshka: >= 3 points within 0.01 of their separate students"] = {
            "value": sum(close), "bound": 3, "met": sum(close) >= 3}
    full = figures.get("layers-6|torch-fp32", {}).get("stsb_test_spearman")
    d128 = figures.get("matryoshka-6x128|torch-fp32", {}).get("stsb_test_spearman")
    if full and d128:
        out["matryoshka 128 dims >= 0.98x the full student"] = {"value": round(d128 / full, 4), "bound": 0.98,
                                                                "met": d128 / full >= 0.98}
    return out


def plot(rows: list[dict[str, Any]], path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    shown = [r for r in rows if r["queries_per_s_1v1000"] and r["stsb_test_spearman"] is not None]
    for r in shown:
        peer = r["role"] == "peer"
        colour = "tab:red" if peer else "tab:blue"
        ax.scatter(r["queries_per_s_1v1000"], r["stsb_test_spearman"], s=60, marker="s" if peer else "o",
                   facecolors=colour if r["pareto"] else "none", edgecolors=colour, zorder=3)
    ax.set_xscale("log")
    ax.autoscale_view()
    # the front and the peers are always named; a dominated point only where its label would not overprint one
    # already placed (fp32 students of one depth serve alike and pile up; the table names every row)
    placed: list[tuple[float, float, float]] = []
    for r in sorted(shown, key=lambda r: (not (r["pareto"] or r["role"] == "peer"), -r["stsb_test_spearman"])):
        label = f"{r['variant']} ({r['backend'].replace('sentence-transformers', 'ST')})"
        x, y = ax.transData.transform((r["queries_per_s_1v1000"], r["stsb_test_spearman"]))
        width = 4.2 * len(label)  # pixels at fontsize 7 and 100 dpi, roughly
        if not (r["pareto"] or r["role"] == "peer") and any(
                abs(y - py) < 11 and x < px + pw and px < x + width for px, py, pw in placed):
            continue
        placed.append((x, y, width))
        ax.annotate(label, (r["queries_per_s_1v1000"], r["stsb_test_spearman"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points", color="black" if r["pareto"] else "grey")
    front = sorted((r for r in shown if r["pareto"]), key=lambda r: r["queries_per_s_1v1000"])
    ax.plot([r["queries_per_s_1v1000"] for r in front], [r["stsb_test_spearman"] for r in front], "k--", lw=0.8,
            label="Pareto front (filled: on it; hollow: dominated; unnamed: see the table)")
    ax.set_xlabel(f"queries/s, 1 query vs {n:,} pre-encoded candidates (log scale; 2 CPU threads)")
    ax.set_ylabel("STS-B test Spearman (cosine)")
    ax.set_title("distill students (circles) vs sentence-transformers peers (squares)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)  # the corner with the fewest points: where they lie varies by machine
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    from distill.evaluation import markdown_table

    lines = ["# The speed/accuracy frontier (STS-B test; 1 query vs 1,000 candidates; one bench run)", "",
             f"Machine: {describe(report['machine'])}. Command: `{report.get('command')}`"
             f"{' (smoke: figures mean nothing)' if report.get('smoke') else ''}.", ""]
    rows = report.get("rows")
    n = N_CANDIDATES[bool(report.get("smoke"))]
    if rows:
        table = [{"variant": r["variant"], "backend": r["backend"], "STS-B test": r["stsb_test_spearman"],
                  f"queries/s 1v{n}": r["queries_per_s_1v1000"], "p50 ms": r.get("p50_ms"),
                  "encode sentences/s (min-max)": f"{r['encode_sentences_per_s']} ({r['encode_spread'][0]}–"
                                                  f"{r['encode_spread'][1]})" if r.get("encode_spread") else "",
                  "size MB": r["size_mb"], "Pareto": "yes" if r["pareto"] else "dominated", "served from":
                  r["export_path"]} for r in sorted(rows, key=lambda r: -(r["queries_per_s_1v1000"] or 0))]
        lines += ["![Pareto front](pareto.png)", "", markdown_table(table), "", "## Targets", ""]
        for name, t in report.get("targets", {}).items():
            verdict = "met" if t["met"] else "NOT met"
            row = f" — {t['row']}" if t.get("row") else ""
            lines.append(f"- {name}: {t['value']} vs {t['bound']} — {verdict}{row}")
        lines.append("")
    lines += ["Students (dev Spearman at the selected checkpoint): " + json.dumps(
        {k: v.get("dev_spearman") for k, v in report.get("fits", {}).items()}), "",
        *(f"Matryoshka points (dev Spearman, cosine, at that checkpoint): {json.dumps(v['dev_points'])}"
          for v in report.get("fits", {}).values() if v.get("dev_points")), "",
        "Stages (s): " + json.dumps(report["stages"]), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = recipe_arguments(__doc__, "frontier", CAP_MIN)
    parser.add_argument("--extra", nargs="*", default=[], choices=sorted(EXTRA),
                        help="opt-in students beyond the default run (each adds EXTRA_MIN minutes to the cap)")
    parser.add_argument("--only_extra", action="store_true",
                        help="train and bench only the --extra students (beside the peers), in runs/frontier-extra")
    args = parser.parse_args()
    if args.only_extra and not args.extra:
        parser.error("--only_extra needs the students to train: add --extra NAME [NAME ...]")
    if args.only_extra and args.out is None:
        args.out = "runs/frontier-extra-smoke" if args.smoke else "runs/frontier-extra"
    if args.time_cap_min is None and not args.smoke:
        base = ONLY_EXTRA_BASE_MIN if args.only_extra else CAP_MIN
        args.time_cap_min = base + sum(EXTRA_MIN[name] for name in args.extra)
    recipe = open_recipe(args, ROOT, "frontier", CAP_MIN, markdown)
    report, out = recipe.report, recipe.out
    try:
        teacher, cache = teacher_and_cache(recipe, out, args.smoke)
        cached = [f"--data.init_args.cache_dir={cache}"]
        pairs, silver_cache = silver(recipe, out, teacher, args.smoke)
        fits = report.setdefault("fits", {})
        exports = report.setdefault("exports", {})

        def fit_stage(name: str, names: list[str], extra: list[str]) -> None:
            if name not in fits:
                fits[name] = recipe.stage(f"fit_{name}", lambda: fit(out, name, overlays(names, args.smoke), extra),
                                          keep=True)

        def export_stage(key: str, name: str, layers: int | None = None, dims: int | None = None,
                         onnx: bool = True) -> None:
            if key not in exports:
                exports[key] = recipe.stage(f"export_{key}", lambda: export(
                    fits[name]["checkpoint"], out / "export" / key, layers, dims, onnx=onnx), keep=True)

        # the reference first: the pool students learn its exported vectors
        with_silver = [f"--data.init_args.train=[stsb/train, {pairs}]",
                       f"--data.init_args.cache_dir=[{cache}, {silver_cache}]"]
        if not args.only_extra:
            default_students(args.smoke, cached, with_silver, fit_stage, export_stage, exports, fits)
        for name in args.extra:
            fit_stage(name, EXTRA[name], with_silver)
            export_stage(name, name)
        if "figures" not in report:
            report["figures"] = recipe.stage("accuracy_and_speed", lambda: accuracy_and_speed(
                exports, args.smoke, 2 if args.smoke else 5), keep=True)
        if "bench" not in report:
            report["bench"] = recipe.stage("bench", lambda: bench(out, exports, args.smoke), keep=True)
        rows = frontier_rows(report)
        report["rows"] = rows
        report["targets"] = targets(rows, report["figures"])
        bench_path = ROOT / report["bench"]["report"]
        bench_report = json.loads(bench_path.read_text())
        bench_report["rows"] = _merged(bench_report["rows"], rows, N_CANDIDATES[args.smoke])
        bench_report["frontier"] = {"targets": report["targets"], "command": report["command"]}
        bench_path.write_text(json.dumps(bench_report, indent=2))
        plot(rows, bench_path.parent / "pareto.png", N_CANDIDATES[args.smoke])
        shutil.copy(bench_path.parent / "pareto.png", out / "pareto.png")
    except TimeCapReached as err:
        print(err, flush=True)
    close_recipe(recipe)
    if report.get("rows"):
        (out / "bench" / "report.md").write_text((out / "report.md").read_text())
        if not args.smoke:  # the default run's copy, or that of an --only_extra run beside it
            stem = "frontier-extra" if args.only_extra else "frontier"
            (ROOT / "docs" / f"{stem}-report.md").write_text((out / "report.md").read_text().replace(
                "![Pareto front](pareto.png)", f"![Pareto front]({stem}-pareto.png)"))
            shutil.copy(out / "pareto.png", ROOT / "docs" / f"{stem}-pareto.png")
    print((out / "report.md").read_text())


def default_students(smoke: bool, cached: list[str], with_silver: list[str], fit_stage: Any, export_stage: Any,
                     exports: dict[str, Any], fits: dict[str, Any]) -> None:
    """The reference (exported first: the pool students learn its vectors), the shallow, narrow and Matryoshka
    students, every Matryoshka point, then the static student built from the exported reference."""
    fit_stage(REFERENCE, VARIANTS[REFERENCE], with_silver)
    export_stage(REFERENCE, REFERENCE)
    source = ROOT / exports[REFERENCE]["folder"]
    vectors = [f"--data.init_args.teacher_embeddings={source}"]
    for name, names in VARIANTS.items():
        fit_stage(name, names, [*cached, *(vectors if "pool" in names else [])])
    for name in VARIANTS:
        if name == "matryoshka":
            for layers, dims in POINTS:
                export_stage(f"matryoshka-{layers}x{dims}", name, layers, dims, onnx=dims == 384 and not smoke)
        else:  # smoke: ONNX int8 on the reference only (each ONNX export and int8 check costs ~30 s)
            export_stage(name, name, onnx=name == REFERENCE or not smoke)
    fit_stage("static", STATIC, [*cached, *vectors, f"--model.init_args.student.init_args.source={source}"])
    export_stage("static", "static", onnx=False)


def _merged(bench_rows: list[dict[str, Any]], rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The bench's rows, each 1-vs-n one carrying its frontier fields (the others unchanged)."""
    extra = {(r["role"], r["model"], r["backend"], r.get("mode")): r for r in rows}
    out = []
    for row in bench_rows:
        match = extra.get((row["role"], row["model"], row["backend"], row.get("mode")))
        frontier = match is not None and row.get("regime") == "one-vs-n" and row.get("n_candidates") == n
        out.append({**row, **{k: match[k] for k in ("variant", "stsb_test_spearman", "queries_per_s_1v1000",
                                                     "encode_sentences_per_s", "encode_spread", "export_path",
                                                     "pareto")}} if frontier else row)
    return out


if __name__ == "__main__":
    main()
