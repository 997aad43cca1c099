"""`distill bench` on tiny models: the report's schema and internal consistency (never timings)."""

from __future__ import annotations

import json

import pytest

from distill.bench import BenchError
from distill.bench import main as bench
from distill.cli import main

ROW_KEYS = {"role", "model", "backend", "mode", "regime", "n_candidates", "throughput", "p50_ms", "p95_ms",
            "peak_rss_mb", "size_mb", "metric", "value", "spread"}


@pytest.fixture(scope="module")
def report(teacher_ckpt: str, student_ckpt: str, pair_files, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    # the tiny models know only the test vocabulary: their pair files, not STS-B (all [UNK] there)
    bench(teacher=teacher_ckpt, students=[student_ckpt], out=str(out), pairs=pair_files["test"], label_range=(0, 5),
          backends=["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"], teacher_backends=["torch-fp32", "onnx-fp32"],
          n_candidates=[10, 50, 200], max_pairs=60, queries=3, repeats=2, chunk_pairs=25, teacher_max_n=50,
          tatoeba=["deu"], floor_gemm_n=128)
    return {"dir": out, **json.loads((out / "report.json").read_text())}


def test_report_has_every_row_with_the_schema(report):
    rows = [r for r in report["rows"] if not r.get("skipped")]
    assert all(ROW_KEYS <= r.keys() for r in report["rows"])
    got = {(r["role"], r["backend"], r["regime"], r["n_candidates"]) for r in rows}
    for backend in ("torch-fp32", "onnx-fp32", "onnx-int8"):
        assert ("student", backend, "unique-pairs", None) in got
        for n in (10, 50, 200):
            assert ("student", backend, "one-vs-n", n) in got
    assert {("st-student", "torch-fp32", "unique-pairs", None), ("st-teacher", "torch-fp32", "unique-pairs", None),
            ("teacher", "onnx-fp32", "one-vs-n", 50)} <= got
    for r in rows:
        assert r["throughput"] > 0 and r["p50_ms"] <= r["p95_ms"] and r["size_mb"] > 0
        assert r["spread"][0] <= r["throughput"] <= r["spread"][1]
        assert r["mode"] in ("cosine", "dse", "cross-encoder")  # DESIGN.md's vocabulary, as students log it
    assert {r["mode"] for r in rows if r["role"] == "student"} == {"cosine", "dse"}  # the student has a head
    # the floor: each one-vs-n student row knows its work and its latency over the backend's measured GEMM rate
    assert set(report["meta"]["floor"]["gflops"]) >= {"torch-fp32", "onnx-fp32", "onnx-int8"}
    for r in rows:
        if r["regime"] == "one-vs-n" and r["role"] in ("student", "st-student") and r["mode"] == "cosine":
            assert r["query_tokens"] > 2 and r["query_gflop"] > 0 and r["floor_ms"] > 0, r
            assert r["latency_over_floor"] == pytest.approx(r["p50_ms"] / r["floor_ms"], rel=0.01)
    teacher = next(r for r in rows if r["role"] == "teacher" and r["regime"] == "one-vs-n" and r["n_candidates"] == 50)
    student = next(r for r in rows if r["role"] == "student" and r["regime"] == "one-vs-n" and r["n_candidates"] == 50)
    assert teacher["query_gflop"] > 40 * student["query_gflop"]  # 50 pairs of about twice the tokens
    assert (report["dir"] / "report.md").read_text().startswith("# distill bench")
    assert (report["dir"] / "pareto.png").stat().st_size > 10_000


def test_accuracy_is_consistent_across_backends_and_the_teacher_is_its_own_reference(report):
    rows = [r for r in report["rows"] if not r.get("skipped")]

    def value(role, backend, regime, n=None, mode="cosine"):
        return next(r["value"] for r in rows if (r["role"], r["backend"], r["regime"], r["n_candidates"]) ==
                    (role, backend, regime, n) and r["mode"] in (mode, "cross-encoder"))

    # same weights -> same Spearman in torch, ONNX fp32 and sentence-transformers (a third of the tiny pairs are
    # identical texts: their cosines of 1 +- 1 ulp reorder those ties, hence 0.02)
    assert value("student", "onnx-fp32", "unique-pairs") == pytest.approx(value("student", "torch-fp32",
                                                                                 "unique-pairs"), abs=0.02)
    assert value("st-student", "torch-fp32", "unique-pairs") == pytest.approx(value("student", "torch-fp32",
                                                                                    "unique-pairs"), abs=0.02)
    # the ONNX teacher against the torch teacher (the reference): same weights, so nearly the same top 10
    assert value("teacher", "onnx-fp32", "one-vs-n", 50) == pytest.approx(1.0, abs=0.05)
    recall = {}
    for r in rows:
        if r["metric"] == "recall@10_vs_teacher" and r["role"] == "student":
            recall.setdefault(r["n_candidates"], []).append(r["value"])
    # a recall where the teacher was measured (N <= teacher_max_n = 50), none where it was only extrapolated
    assert all(v is not None and 0 <= v <= 1 for n in (10, 50) for v in recall[n]) and recall[10] and recall[50]
    assert recall[200] and all(v is None for v in recall[200])


def _runner(role: str, **fns: object) -> object:
    from distill.bench import Runner

    return Runner(role=role, model=role, backend="torch-fp32", size_mb=1.0, load_mb=1.0,
                  modes=("cosine",) if role == "student" else ("cross-encoder",), **fns)


def test_recall_at_10_against_the_teacher_by_hand():
    """N = 20 candidates c0..c19: the teacher ranks c0..c9 first, the student c5..c14 (scores -|j - 9.5|), so the
    student finds 5 of the teacher's top 10 for each query: recall@10 = 0.5 (not 1: N > 10, other models)."""
    import numpy as np
    import torch

    from distill.bench.workloads import OneVsNTask

    data = {"pool": [f"c{j}" for j in range(20)], "queries": ["q0", "q1"]}
    teacher = _runner("teacher", predict=lambda pairs: np.array([-float(c[1:]) for _, c in pairs]))
    student = _runner("student", encode=lambda texts: torch.tensor(
        [[1.0] if t.startswith("q") else [-abs(float(t[1:]) - 9.5)] for t in texts]))
    teacher_top: dict = {}
    reference = OneVsNTask(teacher, "cross-encoder", data, 20, 1, teacher_top, is_reference=True)
    reference.work(0)
    assert teacher_top == {(20, 0): set(range(10)), (20, 1): set(range(10))}
    task = OneVsNTask(student, "cosine", data, 20, 1, teacher_top, is_reference=False)
    task.work(0)
    assert task.accuracy() == [("cosine", "recall@10_vs_teacher", 0.5)]


def test_ratios_and_verdicts_of_a_hand_made_table():
    """Per-repeat throughput samples with known ratios: a win (2, 2, 2), a tie whose spread straddles 1
    though its median is above it (2, 0.5, 1.2) and a loss (0.5, 0.5, 0.5), with the int8 Spearman delta
    carried along."""
    from distill.bench import ratios

    def row(role: str, backend: str, samples: list[float], value: float | None = None) -> dict:
        return {"role": role, "backend": backend, "regime": "unique-pairs", "n_candidates": None,
                "mode": "cosine" if role == "student" else None, "samples": samples, "throughput": samples[0],
                "value": value}

    rows = [row("student", "torch-fp32", [10.0, 12.0, 11.0], 0.75), row("st-student", "torch-fp32", [5.0, 6.0, 5.5]),
            row("teacher", "torch-fp32", [20.0, 10.0, 12.0]), row("st-teacher", "torch-fp32", [10.0, 20.0, 10.0]),
            row("student", "onnx-int8", [5.0, 6.0, 5.5], 0.70)]
    got = {q["name"].split(" (")[0]: (q["verdict"], q["median"], q["spread"]) for q in ratios(rows)}
    tie = "tie (spread overlaps 1.0)"
    assert got == {"student encode vs SentenceTransformer.encode": ("win", 2.0, [2.0, 2.0]),
                   "teacher vs CrossEncoder.predict": (tie, 1.2, [0.5, 2.0]),  # median > 1, still a tie
                   "student ONNX int8 vs torch fp32": ("loss", 0.5, [0.5, 0.5]),
                   "student vs teacher, unique pairs": (tie, 0.917, [0.5, 1.2])}
    int8 = next(q for q in ratios(rows) if q["name"].startswith("student ONNX int8"))
    assert int8["spearman_delta"] == pytest.approx(-0.05)


def test_one_vs_n_ratios_have_their_direction_and_their_targets():
    """Queries/s samples at N = 1000: student torch 100, ONNX int8 300, sentence-transformers 80, teacher torch 0.1,
    teacher int8 0.25; each ratio is its numerator over its denominator (swapped, the targets would fail), and a
    target is met or missed only when the whole spread is on one side."""
    from distill.bench import ratios

    def row(role: str, backend: str, samples: list[float], model: str = "m") -> dict:
        return {"role": role, "model": model, "backend": backend, "regime": "one-vs-n", "n_candidates": 1000,
                "mode": "cross-encoder" if "teacher" in role else "cosine", "samples": samples,
                "throughput": samples[0], "value": 0.6, "query_gflop": 0.25 if "teacher" not in role else 500.0}

    rows = [row("student", "torch-fp32", [100.0, 100.0]), row("student", "onnx-int8", [300.0, 240.0]),
            row("st-student", "torch-fp32", [80.0, 125.0]), row("teacher", "torch-fp32", [0.1, 0.1]),
            row("teacher", "onnx-int8", [0.25, 0.25]), row("peer", "torch-fp32", [30.0, 30.0], "all-mpnet-base-v2")]
    got = {q["name"]: q for q in ratios(rows)}
    st = got["one query vs 1000: student vs SentenceTransformer (encode + dot + top-k), queries/s"]
    assert (st["median"], st["spread"], st["target_verdict"]) == (1.025, [0.8, 1.25], "borderline (spread overlaps "
                                                                                       "the target)")
    fast_st = got["one query vs 1000: student at its fastest (onnx-int8) vs SentenceTransformer on the same weights, "
                  "queries/s"]
    assert fast_st["spread"] == [1.92, 3.75] and fast_st["target_verdict"] == "borderline (spread overlaps the target)"
    torch_teacher = got["one query vs 1000: student torch fp32 vs teacher torch fp32, queries/s"]
    assert torch_teacher["median"] == 1000.0 and torch_teacher["target_verdict"] == "met"
    assert torch_teacher["flop_ratio"] == 2000.0
    fastest = got["one query vs 1000: student at its fastest (onnx-int8) vs teacher at its fastest (onnx-int8), "
                  "queries/s"]
    assert fastest["spread"] == [960.0, 1200.0] and fastest["target_verdict"] == "borderline (spread overlaps the " \
                                                                                   "target)"
    peer = got["one query vs 1000: student at its fastest (onnx-int8) vs all-mpnet-base-v2 (sentence-transformers), "
               "queries/s"]
    assert peer["median"] == 9.0 and peer["verdict"] == "win"


def test_extrapolated_rows_are_a_pure_function_of_the_measured_rows():
    """Hand-made measured rows in, the teacher's rows above teacher_max_n out: throughput divided and latency
    multiplied by N / 100, no accuracy claimed; students and unique pairs untouched, the input left as it was (an
    extrapolation patched onto a task, or scaled the wrong way, would not give these numbers)."""
    import copy

    from distill.bench.report import extrapolated_rows, in_report_order

    def row(role: str, regime: str, n: int | None, throughput: float, p50: float, samples: list[float]) -> dict:
        return {"role": role, "model": role, "backend": "torch-fp32", "mode": "cross-encoder", "regime": regime,
                "n_candidates": n, "throughput": throughput, "p50_ms": p50, "p95_ms": 2 * p50,
                "spread": [min(samples), max(samples)], "samples": samples, "metric": "m", "value": 0.9}

    measured = [row("teacher", "unique-pairs", None, 50.0, 10.0, [40.0, 60.0]),
                row("teacher", "one-vs-n", 10, 80.0, 12.5, [70.0, 90.0]),
                row("teacher", "one-vs-n", 100, 8.0, 125.0, [6.0, 10.0]),
                row("student", "one-vs-n", 100, 900.0, 1.0, [800.0, 1000.0]),
                row("student", "one-vs-n", 1000, 400.0, 2.5, [300.0, 500.0])]
    before = copy.deepcopy(measured)
    got = extrapolated_rows(measured, [10, 100, 1000, 10000], teacher_max_n=100)
    assert measured == before
    assert [(r["role"], r["n_candidates"], r["extrapolated_from"], r["value"]) for r in got] == [
        ("teacher", 1000, 100, None), ("teacher", 10000, 100, None)]
    assert [(r["throughput"], r["p50_ms"], r["p95_ms"], r["spread"], r["samples"]) for r in got] == [
        (0.8, 1250.0, 2500.0, [0.6, 1.0], [0.6, 1.0]), (0.08, 12500.0, 25000.0, [0.06, 0.1], [0.06, 0.1])]
    assert extrapolated_rows(measured, [10, 100], teacher_max_n=100) == []
    ordered = in_report_order([*measured, *got])  # each extrapolated row after the measured rows of its N
    assert [(r["role"], r["n_candidates"], "extrapolated_from" in r) for r in ordered[4:]] == [
        ("student", 1000, False), ("teacher", 1000, True), ("teacher", 10000, True)]


def test_large_n_teacher_rows_are_extrapolated_and_labelled(report):
    big = [r for r in report["rows"] if r["role"] == "teacher" and r["n_candidates"] == 200]
    base = {r["backend"]: r for r in report["rows"] if r["role"] == "teacher" and r["n_candidates"] == 50}
    assert big and all(r["extrapolated_from"] == 50 and r["value"] is None for r in big)
    for r in big:
        assert r["p50_ms"] == pytest.approx(base[r["backend"]]["p50_ms"] * 4, rel=1e-3)


def test_ratios_name_their_verdict_and_skips_their_reason(report):
    names = [q["name"] for q in report["ratios"]]
    assert any(n.startswith("student encode vs SentenceTransformer") for n in names)
    assert any(n.startswith("student ONNX int8 vs torch fp32") for n in names)
    assert any("one query vs 50: student vs teacher" in n for n in names)
    for q in report["ratios"]:  # verdicts themselves: test_ratios_and_verdicts_of_a_hand_made_table
        lo, hi = q["spread"]
        assert lo <= q["median"] <= hi
        assert q["verdict"] in ("win", "loss", "tie (spread overlaps 1.0)")
    assert report["meta"]["machine"]["threads"] >= 1 and report["meta"]["versions"]["torch"]
    assert {t["direction"] for t in report["tatoeba"]} == {"de-en", "en-de"}


def test_the_teacher_given_as_a_student_is_refused(teacher_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--students", f"[{teacher_ckpt}]", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert "is a teacher checkpoint, given as the student" in err and err.count("\n") == 0


def test_an_unknown_backend_is_refused(student_ckpt, tmp_path):
    with pytest.raises(BenchError, match=r"backends: unknown \['tensorrt'\]"):
        bench(students=[student_ckpt], out=str(tmp_path), backends=["tensorrt"])


def test_a_teacher_max_n_below_every_n_is_refused(teacher_ckpt, tmp_path):
    """With no measured N to extrapolate the teacher's one-vs-n rows from, the run used to die in `max()` of an
    empty list after the models were exported; it is refused up front, naming the key."""
    with pytest.raises(BenchError, match=r"teacher_max_n=5 is below every n_candidates \[10, 100\]"):
        bench(teacher=teacher_ckpt, out=str(tmp_path), n_candidates=[100, 10], teacher_max_n=5)


def test_a_missing_backend_names_the_extra(student_ckpt, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ImportError, match=r"pip install 'distill\[export\]'"):
        bench(students=[student_ckpt], out=str(tmp_path), backends=["onnx-int8"])


def test_bf16_without_native_support_is_a_skipped_row_with_its_reason(monkeypatch, tmp_path):
    from distill.bench import runners
    from distill.bench.report import skipped_row

    monkeypatch.setattr(runners, "bf16_reason", lambda: "this CPU lacks native bf16 (avx512_bf16/amx_bf16)")
    folders = {"student": {"role": "student", "folder": str(tmp_path)}}
    skipped = runners.skips(folders, ["torch-fp32", "torch-bf16"], [])
    assert skipped == [("student", "student", "torch-bf16", "this CPU lacks native bf16 (avx512_bf16/amx_bf16)")]
    row = skipped_row(*skipped[0])
    assert row["throughput"] is None and row["skipped"].startswith("this CPU lacks native bf16")


def test_a_candidate_pool_smaller_than_n_is_refused(pair_files, monkeypatch):
    from distill.bench import workloads

    monkeypatch.setattr(workloads, "_fill_from_tatoeba", lambda pool, size, seen: pool)  # no Tatoeba to top it up
    with pytest.raises(BenchError, match=r"n_candidates asks for 100000 candidates; only \d+ sentences exist"):
        workloads.read_inputs(pair_files["test"], (0, 5), None, queries=2, pool_size=100_000)
