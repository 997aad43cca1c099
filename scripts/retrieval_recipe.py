"""Retrieval distillation (issue 17): a cross-encoder reranker taught into a multilingual retriever, with controls.

Stages (each timed into runs/retrieval/report.json; a killed run resumes where it stopped):
1. `data`: answer-sentence retrieval pairs from the SQuAD training split (distill.retrieval: SQuAD v1.1 dev minus
   every XQuAD paragraph and question, split by paragraph), the sentence pool, and a seeded sample of 2,000
   questions for the students;
2. `mine_groups`: `distill mine` with the zero-shot student (multilingual-e5-small, "query: " / "passage: "): each
   question's 2k nearest sentences that are not gold (k = the groups' negatives); the teacher's training pairs
   are every question's positive and 3 hardest of them (labels 1 / 0), and the same for the dev split;
3. `teacher_fit` (configs/retrieval/teacher.yaml), then the **gate**: the teacher reranking the zero-shot
   student's top 100 must beat the zero-shot student by >= 0.05 nDCG@10 on the dev split (and, reported, on
   XQuAD en->en) before any student is trained; the XQuAD reranking is also the fixed fidelity reference.
   Beside it, the fallback the issue names: the teacher + zero-shot student ensemble (standardised scores, the
   teacher's share chosen on one half of dev and measured on the other); `--teacher_config` overlays another
   reranker (configs/retrieval/teacher-mpnet.yaml) on configs/retrieval/teacher.yaml;
4. `cache_groups` (`distill cache` of the 2k-candidate groups with the teacher), `mine_filtered` (`distill mine
   --teacher_cache ... --false_negative_margin`: the k hardest after dropping candidates the teacher scores near
   the positive), and the unfiltered groups (the k hardest, as `--negatives hardest` would take);
5. arms, the same steps each: `gold-only` (InfoNCE on the gold positive, teacher weight 0) and `distilled`
   (listwise KL on the teacher's scores + the same InfoNCE) on the filtered groups, 3 seeds each, and
   `gold-only-unfiltered` (one seed: what the filter alone gives), each measured per seed on XQuAD en->en and the
   11 xx->en sets (question in xx, English pool), with fidelity to the teacher's top 10;
6. the best seed of each arm (on dev) exported (`runs/retrieval/export/{distilled,gold-only}`) and measured
   once, with the zero-shot student, on SciFact test, STS-B test and the 11 in-language pools.
Writes runs/retrieval/report.json + report.md; docs/retrieval-report.md is its copy.

    nice -n 19 python scripts/retrieval_recipe.py         # about 2 h on 2 quiet CPU cores (teacher included)
    python scripts/retrieval_recipe.py --smoke            # every stage on a few questions, for CI
    python scripts/retrieval_recipe.py --teacher_config configs/retrieval/teacher-mpnet.yaml --out runs/retrieval-mpnet
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from distill import retrieval
from distill.machine import describe
from distill.recipe import (
    QUIET,
    Recipe,
    TimeCapReached,
    best_checkpoint,
    cache_complete,
    close_recipe,
    open_recipe,
    recipe_arguments,
    run_verb,
)
from distill.retrieval import sample_queries

ROOT = Path(__file__).resolve().parents[1]
CAP_MIN = 120  # the all-in time cap, minutes (issue 17)
STUDENT = ["--config", "configs/retrieval/student.yaml"]
GOLD_ONLY = ["--config", "configs/retrieval/gold-only.yaml"]
SMOKE = ["--config", "configs/retrieval/smoke.yaml"]
E5 = {"backbone": "multilingual-e5-small", "prefix": "query: ", "document_prefix": "passage: ",
      "max_seq_length": 256}
NEGATIVES = 3  # per group, for the students (and the teacher's training pairs)
WINDOW = 2 * NEGATIVES  # candidates the teacher scores per question, from which the filtered groups are taken
MARGIN = {False: 0.95, True: 1.5}  # the false-negative filter: drop a candidate the teacher scores above 95% of the
# positive's score (smoke: 150%; its one-epoch teacher scores everything alike and would drop every candidate)
DEPTH = 100  # the teacher reranks the zero-shot student's top DEPTH
FUSION_WEIGHTS = [round(0.1 * i, 1) for i in range(1, 10)]  # the teacher's share in the gate's ensemble
SIZES = {False: {"student_questions": 2000, "gate_questions": 300, "fidelity_questions": 300, "seeds": 3},
         True: {"student_questions": 8, "gate_questions": 8, "fidelity_questions": 24, "seeds": 1}}
# smoke: the fidelity reference is the same 24 questions and 200-sentence pool that `measure` samples (seed 0)
XX = ["ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]  # XQuAD's 11 languages beside English
SMOKE_XX = ["de"]


# -------------------------------------------------------------------------------------------------- data


def write_data(out: Path, smoke: bool) -> dict[str, Any]:
    """Positive pairs and the sentence pool of the training and dev splits, as pair files `distill mine` reads: the
    teacher learns from every training question, the students from a seeded sample of them (their time)."""
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split in ("train", "dev"):
        rows = retrieval.load(f"reqa/squad/{split}")
        if smoke:
            rows = sample_queries(rows, 16, max_docs=300 if split == "train" else 100)
        positives = retrieval.positive_pairs(rows).to_pandas()
        positives.to_parquet(folder / f"{split}-positives.parquet", index=False)
        if split == "train":
            students = sample_queries(rows, SIZES[smoke]["student_questions"])
            retrieval.positive_pairs(students).to_pandas().to_parquet(folder / "students-positives.parquet",
                                                                      index=False)
            sizes["students"] = {"questions": len(students["queries"]), "positive_pairs": len(students["qrels"])}
        sentences = sorted(set(rows["corpus"]["text"]))
        pd.DataFrame({"text_a": sentences, "text_b": sentences}).to_parquet(folder / f"{split}-pool.parquet",
                                                                          index=False)
        sizes[split] = {"questions": len(rows["queries"]), "positive_pairs": len(positives),
                        "pool_sentences": len(sentences)}
    return sizes


def mine(out: Path, split: str, n_negatives: int, path: str, *extra: str, positives: str | None = None) -> str:
    """`distill mine` groups with the zero-shot student over a split's pool; no gold pair is ever a negative."""
    data = out / "data"
    student = json.dumps({"class_path": "students.BiEncoder", "init_args": E5})
    run_verb(["mine", "--student", student, "--sentences", json.dumps([str(data / f"{split}-pool.parquet")]),
              "--out", path, "--mode", "groups", "--positives", positives or str(data / f"{split}-positives.parquet"),
              "--n_negatives", str(n_negatives), "--exclude", json.dumps([str(data / f"{split}-positives.parquet")]),
              *extra])
    return path


def teacher_pairs(groups: str, out: str, negatives: int) -> int:
    """Labelled pairs for the teacher from a group file: each group's positive (1) and its first `negatives` (0)."""
    frame = pd.read_parquet(groups)
    frame["rank"] = frame.groupby("group").cumcount()
    frame = frame[frame["rank"] <= negatives]
    labelled = pd.DataFrame({"text_a": frame["text_a"], "text_b": frame["text_b"],
                             "label": (frame["rank"] == 0).astype(float)})
    labelled.to_parquet(out, index=False)
    return len(labelled)


def hardest(groups: str, out: str, negatives: int) -> str:
    """The first `negatives` candidates of every group (the student's hardest): `distill mine --negatives hardest
    --n_negatives <negatives>` on the same pool, taken from the wider file instead of encoding the pool again."""
    frame = pd.read_parquet(groups)
    frame[frame.groupby("group").cumcount() <= negatives].to_parquet(out, index=False)
    return out


def mine_all(out: Path, smoke: bool) -> dict[str, Any]:
    """Every training question's WINDOW nearest non-gold sentences: the teacher's pairs (positive + 3 hardest), and
    the students' questions' groups, which the teacher then scores (the same as mining their positives alone)."""
    data = out / "data"
    wide = mine(out, "train", WINDOW, str(data / "groups-wide.parquet"))
    dev = mine(out, "dev", NEGATIVES, str(data / "dev-groups.parquet"))
    frame = pd.read_parquet(wide)
    questions = set(pd.read_parquet(data / "students-positives.parquet")["text_a"])
    students = str(data / "groups-wide-students.parquet")
    frame[frame["text_a"].isin(questions)].to_parquet(students, index=False)
    return {"train_rows": teacher_pairs(wide, str(data / "teacher-train.parquet"), NEGATIVES),
            "dev_rows": teacher_pairs(dev, str(data / "teacher-dev.parquet"), NEGATIVES),
            "wide_groups": students}


# --------------------------------------------------------------------------------------------- encoders


def autocast() -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16)  # ~3x faster than fp32 here; what the fits validate in


def zero_shot() -> Any:
    from students import BiEncoder

    return BiEncoder(**E5).eval()


def student_of(ckpt: str) -> Any:
    from distill.checkpoints import load_model

    return load_model(ckpt)[1].eval()


def encoders(student: Any) -> tuple[Callable[[list[str]], torch.Tensor], Callable[[list[str]], torch.Tensor]]:
    def queries(texts: list[str]) -> torch.Tensor:
        with autocast():
            return student.encode(texts, batch_size=64).float()

    def documents(texts: list[str]) -> torch.Tensor:
        with autocast():
            return student.encode(texts, batch_size=64, document=True).float()

    return queries, documents


def scores_of(student: Any, rows: Any) -> torch.Tensor:
    """Cosine scores (n_queries, n_docs) of a student on a retrieval set."""
    queries, documents = encoders(student)
    q = torch.nn.functional.normalize(queries(list(rows["queries"]["text"])), dim=-1)
    d = torch.nn.functional.normalize(documents(list(rows["corpus"]["text"])), dim=-1)
    return q @ d.T


def teacher_scorer(ckpt: str) -> Callable[[list[str], list[str]], Any]:
    from distill.checkpoints import load_model
    from distill.mine import TeacherScores

    teacher = load_model(ckpt)[1]
    scorer = TeacherScores(None, teacher, None, batch_size=128)

    def score(a: list[str], b: list[str]) -> Any:
        with autocast():
            return scorer(a, b)

    return score


def teacher_top(scores: torch.Tensor, rows: Any, score: Callable[[list[str], list[str]], Any],
                depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The student's top `depth` per query (indices, its scores) and the teacher's scores of those candidates."""
    top = scores.topk(min(depth, scores.shape[1]), dim=1)
    q_text, d_text = list(rows["queries"]["text"]), list(rows["corpus"]["text"])
    a = [q_text[i] for i in range(len(q_text)) for _ in range(top.indices.shape[1])]
    b = [d_text[j] for j in top.indices.flatten().tolist()]
    teacher = torch.as_tensor(score(a, b), dtype=torch.float32).view(top.indices.shape)
    return top.indices, top.values, teacher


def cross_fitted(scores: torch.Tensor, top: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor,
                 rows: Any) -> dict[str, Any]:
    """The teacher + zero-shot student ensemble, its teacher share chosen on each half of the questions and
    measured on the other, and the share chosen on all of them (for the sets measured after)."""
    from distill.ir_eval import cross_fitted_fusion, fused_scores, ranking_metrics, relevance_of, reranked_matrix

    relevance = relevance_of(rows)
    chosen, matrix = cross_fitted_fusion(scores, top, student, teacher, relevance, FUSION_WEIGHTS)
    on_all = max(FUSION_WEIGHTS, key=lambda w: ranking_metrics(
        reranked_matrix(scores, top, fused_scores(student, teacher, w)), relevance)["ndcg@10"])
    return {"weights_chosen": chosen, "metrics": metrics(matrix, rows), "weight_on_all": on_all}


def metrics(scores: torch.Tensor, rows: Any) -> dict[str, float]:
    from distill.ir_eval import ranking_metrics, relevance_of

    return {k: round(v, 4) for k, v in ranking_metrics(scores, relevance_of(rows)).items()}


def top10_recall(scores: torch.Tensor, reference_top10: torch.Tensor) -> float:
    """Mean over queries of |top 10 of `scores` ∩ the reference's top 10 (document indices, one row a query)| / 10."""
    top = scores.topk(10, dim=1).indices
    return round(sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(top, reference_top10)) / (10 * len(top)),
                 4)


# ------------------------------------------------------------------------------------------------ stages


def gate(report: dict[str, Any], out: Path, smoke: bool) -> dict[str, Any]:
    """The teacher reranking the zero-shot student's top DEPTH vs the zero-shot student: the dev split's (the gate)
    and XQuAD en->en's (reported; its reranked top 10 is the fixed fidelity reference, saved)."""
    from distill.ir_eval import fused_scores, reranked_matrix

    score = teacher_scorer(report["teacher"]["checkpoint"])
    student = zero_shot()
    figures: dict[str, Any] = {"depth": DEPTH}
    weight = None
    for name, key, n in (("reqa/squad/dev", "dev", SIZES[smoke]["gate_questions"]),
                         ("reqa/xquad/en", "xquad_en", SIZES[smoke]["fidelity_questions"])):
        rows = sample_queries(retrieval.load(name), n, max_docs=200 if smoke else None)
        scores = scores_of(student, rows)
        top, values, teacher_scores = teacher_top(scores, rows, score, DEPTH)
        teacher = reranked_matrix(scores, top, teacher_scores)
        figures[key] = {"questions": len(rows["queries"]), "zero_shot": metrics(scores, rows),
                        "teacher_reranked": metrics(teacher, rows)}
        if key == "dev":  # the ensemble the issue names as the fallback teacher, its weight chosen on dev
            figures["ensemble"] = cross_fitted(scores, top, values, teacher_scores, rows)
            weight = figures["ensemble"]["weight_on_all"]
            figures[key]["ensemble_reranked"] = figures["ensemble"]["metrics"]
        else:
            fused = fused_scores(values, teacher_scores, weight)
            figures[key]["ensemble_reranked"] = metrics(reranked_matrix(scores, top, fused), rows)
            (out / "fidelity-reference.json").write_text(json.dumps(
                {"query_id": list(rows["queries"]["query_id"]), "top10": teacher.topk(10, dim=1).indices.tolist()}))
    gain = figures["dev"]["teacher_reranked"]["ndcg@10"] - figures["dev"]["zero_shot"]["ndcg@10"]
    figures["dev_gain"] = round(gain, 4)
    figures["ensemble"]["dev_gain"] = round(
        figures["dev"]["ensemble_reranked"]["ndcg@10"] - figures["dev"]["zero_shot"]["ndcg@10"], 4)
    # the students learn the cross-encoder's cached scores, so the gate is its; the ensemble is reported beside it
    figures["passed"] = gain >= 0.05
    return figures


def fit(out: Path, name: str, config: list[str], seed: int, smoke: bool) -> dict[str, Any]:
    folder = out / f"{name}-seed{seed}"
    start = time.perf_counter()
    done = run_verb(["fit", *config, *(SMOKE if smoke else []), f"--seed_everything={seed}",
                     f"--data.init_args.seed={seed}",
                     f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
                     f"--data.init_args.cache_dir={out / 'cache' / 'groups'}", *QUIET])
    cb = done.trainer.checkpoint_callback
    return {"checkpoint": os.path.relpath(cb.best_model_path, ROOT),
            "dev_ndcg@10": round(float(cb.best_model_score), 4), "fit_s": round(time.perf_counter() - start, 1),
            "steps": int(done.trainer.global_step)}


def measure(student: Any, smoke: bool, reference: dict[str, Any] | None) -> dict[str, Any]:
    """nDCG@10, MRR@10, recall@100 on XQuAD en->en and the xx->en sets, and fidelity to the teacher's top 10."""
    figures: dict[str, Any] = {}
    pools: dict[tuple[str, ...], torch.Tensor] = {}  # the English pool, encoded once per student
    queries, documents = encoders(student)
    for lang in ["en", *(SMOKE_XX if smoke else XX)]:
        name = "reqa/xquad/en" if lang == "en" else f"reqa/xquad/{lang}-en"
        rows = sample_queries(retrieval.load(name), 24 if smoke else None, max_docs=200 if smoke else None)
        key = tuple(rows["corpus"]["text"])
        if key not in pools:
            pools[key] = torch.nn.functional.normalize(documents(list(key)), dim=-1)
        scores = torch.nn.functional.normalize(queries(list(rows["queries"]["text"])), dim=-1) @ pools[key].T
        figures[lang if lang == "en" else f"{lang}-en"] = metrics(scores, rows)
        if lang == "en" and reference is not None:
            position = {q: i for i, q in enumerate(list(rows["queries"]["query_id"]))}
            # the reference's questions found here, each with its own reference row (a smoke run samples others)
            found = [(position[q], r) for r, q in enumerate(reference["query_id"]) if q in position]
            if found:
                mine_rows, ref_rows = (torch.tensor(x) for x in zip(*found))
                figures["fidelity_recall@10"] = top10_recall(scores[mine_rows], reference["top10"][ref_rows])
    xx = [figures[f"{lang}-en"]["ndcg@10"] for lang in (SMOKE_XX if smoke else XX)]
    figures["xx-en_mean_ndcg@10"] = round(statistics.mean(xx), 4)
    return figures


def final(student: Any, smoke: bool) -> dict[str, Any]:
    """Once per exported arm (and zero-shot): SciFact test, STS-B test (cosine Spearman), the in-language pools."""
    from scipy.stats import spearmanr

    from distill import catalog

    rows = sample_queries(retrieval.load("scifact/test"), 24 if smoke else None, max_docs=100 if smoke else None)
    figures: dict[str, Any] = {"scifact": metrics(scores_of(student, rows), rows)}
    sts = catalog.load("stsb/test").rows.with_format("arrow")
    n = 64 if smoke else len(sts)
    a, b, gold = (sts[c].to_pylist()[:n] for c in ("text_a", "text_b", "label"))
    queries, _ = encoders(student)
    cos = torch.nn.functional.cosine_similarity(queries(a), queries(b)).numpy()
    figures["stsb_test_spearman"] = round(float(spearmanr(cos, gold).statistic), 4)
    for lang in SMOKE_XX if smoke else XX:
        rows = sample_queries(retrieval.load(f"reqa/xquad/{lang}"), 24 if smoke else None,
                              max_docs=200 if smoke else None)
        figures[lang] = metrics(scores_of(student, rows), rows)
    figures["in_language_mean_ndcg@10"] = round(statistics.mean(
        figures[lang]["ndcg@10"] for lang in (SMOKE_XX if smoke else XX)), 4)
    return figures


def export(ckpt: str, folder: Path) -> dict[str, Any]:
    run_verb(["export", "--ckpt", str(ROOT / ckpt), "--out", str(folder), "--overwrite", "true"])
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    return {"folder": os.path.relpath(folder, ROOT), "prompts": config["prompts"]}


# ------------------------------------------------------------------------------------------------ report


ARMS = {"gold-only": GOLD_ONLY, "distilled": [], "gold-only-unfiltered": GOLD_ONLY}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Means and spreads over seeds per arm."""
    out: dict[str, Any] = {}
    for arm, seeds in report.get("arms", {}).items():
        done = [s for s in seeds.values() if "test" in s]
        if not done:
            continue

        def stat(get: Callable[[dict[str, Any]], float], runs: list[dict[str, Any]] = done) -> dict[str, Any]:
            values = [get(s) for s in runs]
            return {"mean": round(statistics.mean(values), 4), "min": min(values), "max": max(values),
                    "n": len(values)}

        out[arm] = {"en": stat(lambda s: s["test"]["en"]["ndcg@10"]),
                    "xx-en": stat(lambda s: s["test"]["xx-en_mean_ndcg@10"]),
                    "fidelity": stat(lambda s: s["test"].get("fidelity_recall@10", float("nan"))),
                    "dev": stat(lambda s: s["fit"]["dev_ndcg@10"])}
    return out


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s, zero = report.get("summary", {}), report.get("zero_shot", {})
    out: dict[str, dict[str, Any]] = {}
    g = report.get("gate")
    if g:
        out["gate: teacher reranking top 100 >= zero-shot + 0.05 nDCG@10 (dev)"] = {
            "value": g["dev_gain"], "bound": 0.05, "met": g["passed"]}
    if "distilled" in s and "gold-only" in s:
        for key, label in (("en", "XQuAD en->en"), ("xx-en", "XQuAD xx->en mean of 11")):
            diff = round(s["distilled"][key]["mean"] - s["gold-only"][key]["mean"], 4)
            out[f"distilled >= gold-only + 0.02 nDCG@10, {label}"] = {"value": diff, "bound": 0.02,
                                                                     "met": diff >= 0.02}
    if zero.get("test"):
        for arm in ("distilled", "gold-only"):
            for key, zkey, label in (("en", "en", "XQuAD en->en"), ("xx-en", "xx-en_mean_ndcg@10", "xx->en mean")):
                if arm in s:
                    z = zero["test"][zkey]["ndcg@10"] if zkey == "en" else zero["test"][zkey]
                    diff = round(s[arm][key]["mean"] - z, 4)
                    out[f"{arm} >= zero-shot + 0.05 nDCG@10, {label}"] = {"value": diff, "bound": 0.05,
                                                                           "met": diff >= 0.05}
    if "distilled" in s:
        f = s["distilled"]["fidelity"]["mean"]
        out["fidelity: recall@10 of the teacher's top 10 >= 0.80 (distilled, XQuAD en->en)"] = {
            "value": f, "bound": 0.80, "met": f >= 0.80}
    fin, zf = report.get("final", {}), zero.get("final")
    if zf and "distilled" in fin:
        for arm in ("distilled", "gold-only"):
            if arm not in fin:
                continue
            d = round(fin[arm]["scifact"]["ndcg@10"] - zf["scifact"]["ndcg@10"], 4)
            out[f"{arm}: SciFact nDCG@10 >= zero-shot - 0.01"] = {"value": d, "bound": -0.01, "met": d >= -0.01}
            d = round(fin[arm]["stsb_test_spearman"] - zf["stsb_test_spearman"], 4)
            out[f"{arm}: STS-B test Spearman >= zero-shot - 0.01"] = {"value": d, "bound": -0.01, "met": d >= -0.01}
    total = report.get("stages", {}).get("total_s")
    if total:
        out[f"whole recipe <= {CAP_MIN} min"] = {"value": round(total / 60, 1), "bound": CAP_MIN,
                                                 "met": total / 60 <= CAP_MIN}
    return out


def markdown(report: dict[str, Any]) -> str:
    from distill.evaluation import markdown_table

    lines = ["# Retrieval distillation: a reranker taught into multilingual-e5-small", "",
             f"Machine: {describe(report['machine'])}. Command: `{report.get('command')}`"
             f"{' (smoke: figures mean nothing)' if report.get('smoke') else ''}.", "",
             f"Training data: {json.dumps(report.get('sizes', {}))}; teacher pairs: "
             f"{json.dumps({k: v for k, v in report.get('mined', {}).items() if k != 'wide_groups'})}.", ""]
    g = report.get("gate")
    if g:
        lines += ["## Teacher gate (the teacher reranking the zero-shot student's top 100)", "",
                  markdown_table([{"set": k, "questions": g[k]["questions"],
                                   **{f"zero-shot {m}": v for m, v in g[k]["zero_shot"].items()},
                                   **{f"reranked {m}": v for m, v in g[k]["teacher_reranked"].items()},
                                   **{f"ensemble {m}": v for m, v in g[k].get("ensemble_reranked", {}).items()}}
                                  for k in ("dev", "xquad_en")]), "",
                  f"Gain on dev: {g['dev_gain']} nDCG@10 ({'passed' if g['passed'] else 'FAILED'}).", ""]
        if "ensemble" in g:
            e = g["ensemble"]
            lines += [f"Ensemble (teacher + zero-shot student, standardised scores per question; the teacher's share "
                      f"chosen on each half of dev, {e['weights_chosen']}, and measured on the other): "
                      f"{e['dev_gain']} nDCG@10 over the zero-shot student on dev; share {e['weight_on_all']} "
                      f"on all of dev for XQuAD. The students learn the cross-encoder's scores, so the gate is "
                      f"its.", ""]
    rows = []
    zero = report.get("zero_shot", {}).get("test")
    if zero:
        rows.append({"arm": "zero-shot", "seed": "—", "dev nDCG@10": "—", "en->en nDCG@10": zero["en"]["ndcg@10"],
                     "xx->en mean nDCG@10": zero["xx-en_mean_ndcg@10"],
                     "fidelity R@10": zero.get("fidelity_recall@10"), "steps": 0})
    for arm, seeds in report.get("arms", {}).items():
        for seed, s in seeds.items():
            if "test" in s:
                rows.append({"arm": arm, "seed": seed, "dev nDCG@10": s["fit"]["dev_ndcg@10"],
                             "en->en nDCG@10": s["test"]["en"]["ndcg@10"],
                             "xx->en mean nDCG@10": s["test"]["xx-en_mean_ndcg@10"],
                             "fidelity R@10": s["test"].get("fidelity_recall@10"), "steps": s["fit"]["steps"]})
    if rows:
        lines += ["## Per seed (XQuAD test, English pool)", "", markdown_table(rows), ""]
    if report.get("summary"):
        lines += ["## Means over seeds (min–max)", "", markdown_table([
            {"arm": arm, **{k: f"{v['mean']} ({v['min']}–{v['max']}, n={v['n']})" for k, v in s.items()}}
            for arm, s in report["summary"].items()]), ""]
    fin = dict(report.get("final", {}))
    if report.get("zero_shot", {}).get("final"):
        fin = {"zero-shot": report["zero_shot"]["final"], **fin}
    if fin:
        lines += ["## Exported students, measured once", "", markdown_table([
            {"model": m, "SciFact nDCG@10": f["scifact"]["ndcg@10"], "STS-B test": f["stsb_test_spearman"],
             "in-language mean nDCG@10": f["in_language_mean_ndcg@10"]} for m, f in fin.items()]), ""]
    if report.get("targets"):
        lines += ["## Targets", ""]
        for name, t in report["targets"].items():
            lines.append(f"- {name}: {t['value']} vs {t['bound']} — {'met' if t['met'] else 'NOT met'}")
        lines.append("")
    lines += ["Stages (s): " + json.dumps(report["stages"]), ""]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = recipe_arguments(__doc__, "retrieval", CAP_MIN)
    parser.add_argument("--teacher_config", action="append", default=[],
                        help="an overlay on configs/retrieval/teacher.yaml (repeatable), e.g. "
                             "configs/retrieval/teacher-mpnet.yaml; give a new --out with it")
    args = parser.parse_args()
    recipe = open_recipe(args, ROOT, "retrieval", CAP_MIN, markdown)
    report, out, smoke = recipe.report, recipe.out, args.smoke
    data = out / "data"
    try:
        run_stages(recipe, report, out, data, smoke, args.teacher_config)
    except TimeCapReached as err:
        print(err, flush=True)
    report["summary"] = summary(report)
    close_recipe(recipe)
    report["targets"] = targets(report)
    recipe.save()
    if not smoke and report.get("final"):
        (ROOT / "docs" / "retrieval-report.md").write_text((out / "report.md").read_text())
    print((out / "report.md").read_text())


def run_stages(recipe: Recipe, report: dict[str, Any], out: Path, data: Path, smoke: bool,
               teacher_configs: list[str]) -> None:
    report["sizes"] = report.get("sizes") or recipe.stage("data", lambda: write_data(out, smoke), keep=True)
    report["mined"] = report.get("mined") or recipe.stage("mine_groups", lambda: mine_all(out, smoke), keep=True)
    teacher_dir = out / "teacher"
    recipe.stage("teacher_fit", lambda: run_verb(
        ["fit", "--config", "configs/retrieval/teacher.yaml",
         *(a for c in teacher_configs for a in ("--config", c)), *QUIET, f"--trainer.default_root_dir={teacher_dir}",
         f"--trainer.logger.init_args.save_dir={teacher_dir}",
         f"--data.init_args.train={data / 'teacher-train.parquet'}",
         f"--data.init_args.val={data / 'teacher-dev.parquet'}",
         *(["--trainer.max_epochs=1"] if smoke else [])]),
        done=best_checkpoint(teacher_dir) is not None)
    report["teacher"] = {"checkpoint": os.path.relpath(best_checkpoint(teacher_dir), ROOT),
                         "configs": ["configs/retrieval/teacher.yaml", *teacher_configs]}
    report["gate"] = report.get("gate") or recipe.stage("gate", lambda: gate(report, out, smoke), keep=True)
    if not report["gate"]["passed"] and not smoke:
        print("retrieval: the teacher missed the gate on dev; no student is trained (a bigger reranker: "
              "--teacher_config configs/retrieval/teacher-mpnet.yaml --out runs/retrieval-mpnet)", flush=True)
        return
    cache = out / "cache" / "groups"
    # the cached scores must come from the teacher the gate measured: its backbone and length from its own run
    hp = yaml.safe_load((ROOT / report["teacher"]["checkpoint"]).parents[1].joinpath("hparams.yaml").read_text())
    recipe.stage("cache_groups", lambda: run_verb(
        ["cache", "--teacher", "teachers.CrossEncoder", "--teacher.backbone", hp["backbone"], "--teacher.max_length",
         str(hp["max_length"]), "--data", "distill.data.PairDataModule", "--data.train", report["mined"]["wide_groups"],
         "--ckpt_path", str(ROOT / report["teacher"]["checkpoint"]), "--out", str(cache), "--precision",
         "bf16-mixed"]), done=cache_complete(cache))
    filtered, unfiltered = data / "groups-filtered.parquet", data / "groups-unfiltered.parquet"
    recipe.stage("mine_filtered", lambda: mine(
        out, "train", NEGATIVES, str(filtered), "--window_end", str(WINDOW), "--false_negative_margin",
        str(MARGIN[smoke]), "--teacher_cache", json.dumps([str(cache)]),
        positives=str(data / "students-positives.parquet")), done=filtered.is_file())
    recipe.stage("groups_unfiltered", lambda: hardest(report["mined"]["wide_groups"], str(unfiltered), NEGATIVES),
                 done=unfiltered.is_file())
    reference = json.loads((out / "fidelity-reference.json").read_text())
    reference["top10"] = torch.tensor(reference["top10"])
    zero = report.setdefault("zero_shot", {})
    if "test" not in zero:
        zero["test"] = recipe.stage("zero_shot_test", lambda: measure(zero_shot(), smoke, reference), keep=True)
    arms = report.setdefault("arms", {})
    seeds = range(SIZES[smoke]["seeds"])
    plan = [(arm, seed) for seed in seeds for arm in ("distilled", "gold-only")]
    plan += [] if smoke else [("gold-only-unfiltered", 0)]  # the same code path as gold-only: not smoked
    for arm, seed in plan:
        run = arms.setdefault(arm, {}).setdefault(str(seed), {})
        groups = unfiltered if arm == "gold-only-unfiltered" else filtered
        if "fit" not in run:
            run["fit"] = recipe.stage(f"fit_{arm}_{seed}", lambda a=arm, s=seed, g=groups: fit(
                out, a, [*STUDENT, *ARMS[a], f"--data.init_args.train={g}"], s, smoke), keep=True)
        if "test" not in run:
            run["test"] = recipe.stage(f"test_{arm}_{seed}", lambda r=run: measure(
                student_of(str(ROOT / r["fit"]["checkpoint"])), smoke, reference), keep=True)
    exports = report.setdefault("exports", {})
    finals = report.setdefault("final", {})
    for arm in ("distilled", "gold-only"):
        best = max(arms[arm].values(), key=lambda r: r["fit"]["dev_ndcg@10"])
        if arm not in exports:
            exports[arm] = recipe.stage(f"export_{arm}", lambda b=best, a=arm: export(
                b["fit"]["checkpoint"], out / "export" / a), keep=True)
        if arm not in finals:
            from students import BiEncoder

            finals[arm] = recipe.stage(f"final_{arm}", lambda a=arm: final(
                BiEncoder.from_pretrained(ROOT / exports[a]["folder"]).eval(), smoke), keep=True)
    if "final" not in zero:
        zero["final"] = recipe.stage("zero_shot_final", lambda: final(zero_shot(), smoke), keep=True)


if __name__ == "__main__":
    main()
