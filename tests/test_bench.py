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
          tatoeba=["deu"])
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
        assert r["mode"] in ("cosine", "dse_head", "cross-encoder")
    assert {r["mode"] for r in rows if r["role"] == "student"} == {"cosine", "dse_head"}  # the student has a head
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
    assert value("teacher", "torch-fp32", "one-vs-n", 50) == 1.0  # the reference agrees with itself
    assert value("teacher", "onnx-fp32", "one-vs-n", 50) == pytest.approx(1.0, abs=0.05)
    # every student row at N = 10 holds all 10 candidates: recall@10 is exactly 1
    assert all(r["value"] == 1.0 for r in rows if r["regime"] == "one-vs-n" and r["n_candidates"] == 10)


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
    for q in report["ratios"]:
        lo, hi = q["spread"]
        assert lo <= q["median"] <= hi
        assert q["verdict"] == ("win" if lo > 1 else "loss" if hi < 1 else "tie (spread overlaps 1.0)")
    assert report["meta"]["machine"]["threads"] >= 1 and report["meta"]["versions"]["torch"]
    assert {t["direction"] for t in report["tatoeba"]} == {"deu-eng", "eng-deu"}


def test_the_teacher_given_as_a_student_is_refused(teacher_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--students", f"[{teacher_ckpt}]", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert "is a teacher checkpoint, given as the student" in err and err.count("\n") == 0


def test_an_unknown_backend_is_refused(student_ckpt, tmp_path):
    with pytest.raises(BenchError, match=r"backends: unknown \['tensorrt'\]"):
        bench(students=[student_ckpt], out=str(tmp_path), backends=["tensorrt"])


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
