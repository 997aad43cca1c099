"""`distill bench`: speed versus accuracy of the teacher and its students, side by side, on the same data.

Regimes: `unique-pairs` (every pair new: both texts encoded, then scored) and `one-vs-n` (one query against N
pre-encoded candidates; the candidates' encoding is a one-off cost reported apart). Backends: torch fp32/bf16 and
ONNX Runtime fp32/int8, with sentence-transformers' `CrossEncoder.predict` and `SentenceTransformer.encode` on the
same weights as baselines. Every row is run `repeats` times, interleaved with the other rows (so drift in the
machine's speed hits all rows alike), after a warm-up; figures are medians with their spread over repeats.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from distill import export as exporting
from distill import onnx_backend, tracking
from distill.checkpoints import CheckpointError, read_checkpoint
from students.bi_encoder import CONFIG_NAME as STUDENT_CONFIG

BACKENDS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")
REGIMES = ("unique-pairs", "one-vs-n")
TOP_K = 10


class BenchError(ValueError):
    """A bench config that cannot run; the message names the key and the fix."""


def main(
    teacher: str | None = None,
    students: list[str] | None = None,
    out: str = "runs/bench",
    backends: list[str] | None = None,
    teacher_backends: list[str] | None = None,
    regimes: list[str] | None = None,
    n_candidates: list[int] | None = None,
    pairs: str = "stsb/test",
    label_range: tuple[float, float] | None = None,
    max_pairs: int | None = None,
    queries: int = 10,
    repeats: int = 5,
    batch_size: int = 32,
    chunk_pairs: int = 256,
    threads: int | None = None,
    baselines: bool = True,
    teacher_max_n: int = 1000,
    tatoeba: list[str] | None = None,
    update_cards: bool = True,
    wandb_run: str | None = None,
) -> dict[str, Any]:
    """Measure speed versus accuracy of a teacher and students (report.json, report.md, pareto.png).

    Args:
        teacher: the teacher: a `distill fit` checkpoint or an exported teacher folder.
        students: students: checkpoints or exported folders (`distill export`).
        out: output folder (`runs/<experiment>/bench`).
        backends: student backends, of torch-fp32, torch-bf16, onnx-fp32, onnx-int8.
        teacher_backends: teacher backends (same names); the teacher's fastest one is used for the speed-up ratio.
        regimes: unique-pairs and/or one-vs-n.
        n_candidates: candidate pool sizes N for one-vs-n.
        pairs: the pair data (a catalog name like `stsb/test`, a file, or hf:<id>[:<config>]:<split>).
        label_range: the gold labels' range, for a pair file with labels (catalog sets know theirs).
        max_pairs: use only the first pairs (unique-pairs accuracy and timing).
        queries: queries per N in one-vs-n (first texts of distinct pairs, never in the candidate pool).
        repeats: interleaved timed repeats per row (>= 5 for reported figures), after one warm-up.
        batch_size: texts (or pairs, for the teacher) per forward pass, the same for every model and baseline.
        chunk_pairs: unique-pairs requests: the pairs arrive in chunks of this size; latency is per chunk.
        threads: intra-op threads for torch and ONNX Runtime (default: all cores).
        baselines: also time sentence-transformers on the same weights.
        teacher_max_n: above this N the teacher's one-vs-n latency is extrapolated linearly (and so labelled).
        tatoeba: Tatoeba languages (ISO 639-3, e.g. deu) for bitext retrieval accuracy of the students (xx->en and
            en->xx, 1 vs the language's up to 1000 sentences).
        update_cards: add the measured figures to exported folders' model cards.
        wandb_run: also log the tables and the Pareto plot to this W&B run (`entity/project/run_id`).
    """
    backends = list(backends or ["torch-fp32", "onnx-int8"])
    teacher_backends = list(teacher_backends or ["torch-fp32"])
    regimes = list(regimes or REGIMES)
    n_candidates = sorted(n_candidates or [10, 100, 1000])
    for key, given, allowed in (("backends", backends, BACKENDS), ("teacher_backends", teacher_backends, BACKENDS),
                                ("regimes", regimes, REGIMES)):
        unknown = [b for b in given if b not in allowed]
        if unknown:
            raise BenchError(f"{key}: unknown {unknown}; choose from {list(allowed)}")
    if not teacher and not students:
        raise BenchError("nothing to measure: set `teacher` and/or `students`")
    if repeats < 1 or queries < 1:
        raise BenchError("repeats and queries must be >= 1")
    if any(b.startswith("onnx") for b in [*backends, *teacher_backends]):
        onnx_backend.require_onnxruntime()
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = _data(pairs, label_range, max_pairs, queries, max(n_candidates) if "one-vs-n" in regimes else 0)
    sampler = RssSampler()
    base_rss = sampler.current()
    folders = _prepare(teacher, students or [], out_dir, backends, teacher_backends)
    runners = _runners(folders, backends, teacher_backends, baselines, threads, batch_size, sampler)
    tasks = _tasks(runners, regimes, n_candidates, data, chunk_pairs, teacher_max_n, repeats)

    for task in tqdm(tasks, desc="warm-up", leave=False):
        task.warm_up()
    for r in tqdm(range(repeats), desc="repeats"):
        for task in tasks:
            task.run(r, sampler)
    rows = [row for task in tasks for row in task.rows()]
    rows += [_skipped(*s) for s in _skips(folders, backends, teacher_backends)]
    tatoeba_rows = _tatoeba(runners, tatoeba or [], batch_size) if tatoeba else []
    report = {"meta": _meta(data, threads, repeats, batch_size, chunk_pairs, queries, folders, base_rss,
                            teacher_max_n),
              "rows": rows, "ratios": ratios(rows), "tatoeba": tatoeba_rows}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown(report))
    plot_pareto(rows, out_dir / "pareto.png")
    if wandb_run:
        with tracking.logging_to(wandb_run) as run:
            tracking.log_table("bench/rows", rows, run=run)
            tracking.log_table("bench/ratios", report["ratios"], run=run)
            tracking.log_table("bench/tatoeba", tatoeba_rows, run=run)
            if (out_dir / "pareto.png").is_file():
                tracking.log_image("bench/pareto", out_dir / "pareto.png", run=run)
    if update_cards:
        for name, info in folders.items():
            own = [r for r in rows if r["model"] == name and r.get("throughput") is not None]
            report_file = Path(info["folder"]) / exporting.REPORT
            if own and report_file.is_file():
                exporting.write_card(Path(info["folder"]), json.loads(report_file.read_text()), own)
    print((out_dir / "report.md").read_text())
    return report


# ---------------------------------------------------------------- data


def _data(source: str, label_range: tuple[float, float] | None, max_pairs: int | None, queries: int,
          pool_size: int) -> dict[str, Any]:
    from distill.data import read_pairs

    rows, _ = read_pairs(source, label_range=label_range)
    n = min(max_pairs or len(rows), len(rows))
    data: dict[str, Any] = {"source": source, "a": rows["text_a"][:n], "b": rows["text_b"][:n],
                            "gold": rows["label"][:n] if "label" in rows.column_names else None}
    if pool_size:
        qs = list(dict.fromkeys(rows["text_a"]))[:queries]
        taken = set(qs)
        pool = [t for t in dict.fromkeys([*rows["text_b"], *rows["text_a"]]) if t not in taken]
        from_pairs = min(len(pool), pool_size)
        pool = pool[:pool_size]
        if len(pool) < pool_size:  # larger pools: English sides of the Tatoeba test sets (catalog), in code order
            from distill.languages import TATOEBA_CODES
            from distill.multilingual import read_tatoeba

            seen = set(pool) | taken
            for code in TATOEBA_CODES:
                for line in read_tatoeba(code)[1]:
                    if line and line not in seen:
                        seen.add(line)
                        pool.append(line)
                if len(pool) >= pool_size:
                    break
            pool = pool[:pool_size]
        data.update(queries=qs, pool=pool,
                    pool_source=f"{from_pairs} distinct sentences of {source} (queries excluded)"
                                + (f", then {len(pool) - from_pairs} English sentences of the Tatoeba test sets "
                                   f"(catalog `tatoeba/<code>`)" if len(pool) > from_pairs else ""))
        if len(pool) < pool_size:
            raise BenchError(f"n_candidates asks for {pool_size} candidates; only {len(pool)} sentences exist")
    return data


# ---------------------------------------------------------------- models


def _prepare(teacher: str | None, students: list[str], out_dir: Path, backends: list[str],
             teacher_backends: list[str]) -> dict[str, dict[str, Any]]:
    """name -> exported folder: checkpoints are exported once into `out/models/` (with ONNX when asked for)."""
    folders: dict[str, dict[str, Any]] = {}
    specs = ([("teacher", "teacher", teacher)] if teacher else []) + [
        ("student", "student" if len(students) == 1 else f"student-{i + 1}", s) for i, s in enumerate(students)]
    for role, name, path in specs:
        wanted = teacher_backends if role == "teacher" else backends
        folder = Path(path)
        if folder.is_dir():
            is_student = (folder / STUDENT_CONFIG).is_file()
            if is_student != (role == "student"):
                raise BenchError(f"{path} is a {'student' if is_student else 'teacher'} folder, given as the "
                                 f"{role}; swap `teacher` and `students`")
        else:
            kind = _checkpoint_kind(path)
            if kind != role:
                raise BenchError(f"{path} is a {kind} checkpoint, given as the {role}; swap `teacher` and `students`")
            folder = out_dir / "models" / name
            exporting.main(str(path), str(folder), onnx=any(b.startswith("onnx") for b in wanted),
                           int8="onnx-int8" in wanted, overwrite=True)
        folders[name] = {"role": role, "path": str(path), "folder": str(folder)}
    return folders


def _checkpoint_kind(path: str) -> str:
    state = read_checkpoint(path)["state_dict"]
    if any(k.startswith("student.") for k in state):
        return "student"
    if any(k.startswith("model.") for k in state):
        return "teacher"
    raise CheckpointError(f"{path}: neither a teacher nor a student checkpoint; pass one `distill fit` wrote")


def _bf16_reason() -> str | None:
    """Why torch bf16 is not measured here, or None when the CPU has native bf16 instructions."""
    flags = ""
    if Path("/proc/cpuinfo").is_file():
        flags = Path("/proc/cpuinfo").read_text()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return None
    return "this CPU lacks native bf16 (avx512_bf16/amx_bf16): torch would emulate it, slower than fp32"


def _onnx_file(backend: str) -> str:
    return onnx_backend.INT8_FILE if backend == "onnx-int8" else onnx_backend.ONNX_FILE


def _skips(folders: dict[str, dict[str, Any]], backends: list[str],
           teacher_backends: list[str]) -> list[tuple[str, str, str, str]]:
    out = []
    for name, info in folders.items():
        for backend in teacher_backends if info["role"] == "teacher" else backends:
            reason = _skip_reason(info, backend)
            if reason:
                out.append((info["role"], name, backend, reason))
    return out


def _skip_reason(info: dict[str, Any], backend: str) -> str | None:
    if backend == "torch-bf16":
        return _bf16_reason()
    if backend.startswith("onnx") and not (Path(info["folder"]) / _onnx_file(backend)).is_file():
        return f"{info['folder']} has no {_onnx_file(backend)}; export it with `distill export --onnx --int8`"
    return None


@dataclass
class Runner:
    """One model on one backend: `encode` (students) or `predict` (teachers), plus what the report needs."""

    role: str  # teacher | student | st-teacher | st-student
    model: str
    backend: str
    size_mb: float
    load_mb: float
    encode: Callable[[list[str]], torch.Tensor] | None = None
    predict: Callable[[list[tuple[str, str]]], np.ndarray] | None = None
    modes: tuple[str, ...] = ("cross-encoder",)
    head: Any = None
    normalized: bool = True
    candidates: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)  # N -> (embeddings, seconds)

    def score(self, u: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
        """Pair scores of embeddings; `v` may hold many candidates against one `u`."""
        if mode == "dse_head":
            with torch.inference_mode():
                return self.head(u.expand_as(v) if len(u) == 1 else u, v)
        if self.normalized:
            return (u * v).sum(-1)
        return torch.nn.functional.cosine_similarity(u, v, dim=-1)


def _mb(folder: Path, files: list[str]) -> float:
    return round(sum((folder / f).stat().st_size for f in files if (folder / f).is_file()) / 1e6, 2)


def _runners(folders: dict[str, dict[str, Any]], backends: list[str], teacher_backends: list[str],
             baselines: bool, threads: int, batch_size: int, sampler: RssSampler) -> list[Runner]:
    from students import BiEncoder

    runners = []
    for name, info in folders.items():
        folder = Path(info["folder"])
        if info["role"] == "student":
            config = json.loads((folder / STUDENT_CONFIG).read_text())
            before = sampler.current()
            student = BiEncoder.from_pretrained(folder).eval()
            load_mb = sampler.current() - before
            modes = ("cosine", "dse_head") if student.head is not None else ("cosine",)
            torch_mb = _mb(folder, ["model.safetensors", "dse_head.safetensors"])
            for backend in backends:
                if _skip_reason(info, backend):
                    continue
                common = dict(role="student", model=name, backend=backend, modes=modes, head=student.head,
                              normalized=config["normalize"])
                if backend.startswith("torch"):
                    runners.append(Runner(**common, size_mb=torch_mb, load_mb=load_mb,
                                          encode=_torch_encode(student, batch_size, backend == "torch-bf16")))
                else:
                    before = sampler.current()
                    served = onnx_backend.OnnxStudent(folder, _onnx_file(backend), config, threads)
                    runners.append(Runner(**common, size_mb=_mb(folder, [_onnx_file(backend), "dse_head.safetensors"]),
                                          load_mb=sampler.current() - before,
                                          encode=lambda t, s=served: s.encode(t, batch_size)))
            if baselines:
                from sentence_transformers import SentenceTransformer

                before = sampler.current()
                st = SentenceTransformer(str(folder), device="cpu")
                runners.append(Runner(role="st-student", model=name, backend="torch-fp32", size_mb=torch_mb,
                                      load_mb=sampler.current() - before, modes=("cosine",),
                                      normalized=config["normalize"],
                                      encode=lambda t, m=st: m.encode(t, batch_size=batch_size,
                                                                      convert_to_tensor=True)))
        else:
            max_length = json.loads((folder / exporting.REPORT).read_text())["config"]["max_length"] if (
                folder / exporting.REPORT).is_file() else 512
            for backend in teacher_backends:
                if _skip_reason(info, backend):
                    continue
                before = sampler.current()
                if backend.startswith("torch"):
                    predict = _torch_predict(folder, max_length, batch_size, backend == "torch-bf16")
                    size = _mb(folder, ["model.safetensors"])
                else:
                    served = onnx_backend.OnnxCrossEncoder(folder, _onnx_file(backend), max_length, threads)
                    predict = lambda p, s=served: s.predict(p, batch_size)  # noqa: E731
                    size = _mb(folder, [_onnx_file(backend)])
                runners.append(Runner(role="teacher", model=name, backend=backend, size_mb=size,
                                      load_mb=sampler.current() - before, predict=predict))
            if baselines:
                from sentence_transformers import CrossEncoder

                before = sampler.current()
                ce = CrossEncoder(str(folder), device="cpu", max_length=max_length)
                runners.append(Runner(role="st-teacher", model=name, backend="torch-fp32",
                                      size_mb=_mb(folder, ["model.safetensors"]), load_mb=sampler.current() - before,
                                      predict=lambda p, m=ce: np.asarray(m.predict(p, batch_size=batch_size,
                                                                                   show_progress_bar=False))))
    return runners


def _torch_encode(student: Any, batch_size: int, bf16: bool) -> Callable[[list[str]], torch.Tensor]:
    def encode(texts: list[str]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return student.encode(texts, batch_size=batch_size)

    return encode


def _torch_predict(folder: Path, max_length: int, batch_size: int,
                   bf16: bool) -> Callable[[list[tuple[str, str]]], np.ndarray]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    @torch.inference_mode()
    def predict(pairs: list[tuple[str, str]]) -> np.ndarray:
        # longest first, so each batch pads to similar lengths (sentence-transformers sorts the same way)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**enc).logits.float().reshape(-1)
            out[idx] = torch.sigmoid(logits).numpy()
        return out

    return predict


# ---------------------------------------------------------------- timing


class RssSampler:
    """Peak resident memory while a block runs, sampled from /proc every 2 ms (0 where /proc is absent)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._peak = 0.0
        self._stop = threading.Event()

    def current(self) -> float:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page / 1e6
        except (OSError, IndexError, ValueError):
            return 0.0

    def __enter__(self) -> RssSampler:
        self._peak = self.current()
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._peak = max(self._peak, self.current())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.current())

    @property
    def peak(self) -> float:
        return self._peak


@dataclass
class Task:
    """One runner in one regime (and N): timed once per repeat, accuracy taken from its outputs."""

    runner: Runner
    regime: str
    n: int | None
    work: Callable[[int], list[float]]  # repeat -> latencies (s) of the requests it served
    warm: Callable[[], None]
    accuracy: Callable[[], list[tuple[str, str, float | None]]]  # -> [(mode, metric, value)]
    units: Callable[[int], int]  # repeat -> requests served (pairs or queries)
    extra: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)  # throughput per repeat
    latencies: list[float] = field(default_factory=list)
    peak_mb: float = 0.0

    def warm_up(self) -> None:
        self.warm()

    def run(self, repeat: int, sampler: RssSampler) -> None:
        start_rss = sampler.current()
        with sampler:
            t0 = time.perf_counter()
            lat = self.work(repeat)
            elapsed = time.perf_counter() - t0
        self.peak_mb = max(self.peak_mb, sampler.peak - start_rss)
        if lat:
            self.latencies += lat
            self.samples.append(self.units(repeat) / elapsed)

    def rows(self) -> list[dict[str, Any]]:
        r = self.runner
        out = []
        for mode, metric, value in self.accuracy():
            row = {"role": r.role, "model": r.model, "backend": r.backend, "mode": mode, "regime": self.regime,
                   "n_candidates": self.n, "throughput": _median(self.samples),
                   "p50_ms": _pct(self.latencies, 50), "p95_ms": _pct(self.latencies, 95),
                   "peak_rss_mb": round(r.load_mb + self.peak_mb, 1), "size_mb": r.size_mb, "metric": metric,
                   "value": None if value is None else round(float(value), 4),
                   "spread": [round(min(self.samples), 3), round(max(self.samples), 3)] if self.samples else None,
                   "samples": [round(s, 3) for s in self.samples],
                   **{k: v for k, v in self.extra.items() if k in ("latency_unit", "candidate_encode_s")}}
            out.append(row)
        return out


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def _pct(xs: list[float], q: int) -> float | None:
    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 3) if xs else None


def _tasks(runners: list[Runner], regimes: list[str], ns: list[int], data: dict[str, Any], chunk: int,
           teacher_max_n: int, repeats: int) -> list[Task]:
    tasks: list[Task] = []
    if "unique-pairs" in regimes:
        chunks = [slice(i, i + chunk) for i in range(0, len(data["a"]), chunk)]
        for runner in runners:
            for mode in _modes(runner):
                tasks.append(_pairs_task(runner, mode, data, chunks))
    if "one-vs-n" in regimes:
        teacher_top: dict[tuple[int, int], set[int]] = {}  # (N, query) -> the teacher's top 10
        reference = next((r for r in runners if r.role == "teacher"), None)
        for n in ns:
            for runner in runners:
                if runner.role == "st-teacher" or (runner.predict is not None and n > teacher_max_n):
                    continue  # the teacher baseline is timed on unique pairs; large N: extrapolated rows below
                for mode in _modes(runner):
                    tasks.append(_one_vs_n_task(runner, mode, data, n, repeats, teacher_top, runner is reference))
            for runner in runners:
                if runner.role == "teacher" and n > teacher_max_n:
                    base = next(t for t in tasks if t.runner is runner and t.n == max(m for m in ns
                                                                                   if m <= teacher_max_n))
                    tasks.append(_extrapolated(base, n))
    return tasks


def _modes(runner: Runner) -> tuple[str, ...]:
    # each scoring mode is its own row, timed alone: the DSE head costs an MLP pass per candidate, cosine a dot
    return ("cross-encoder",) if runner.predict is not None else runner.modes


def _pairs_task(runner: Runner, mode: str, data: dict[str, Any], chunks: list[slice]) -> Task:
    scores: list[float] = []

    def serve(sl: slice, keep: bool) -> None:
        a, b = data["a"][sl], data["b"][sl]
        if runner.predict is not None:
            s = runner.predict(list(zip(a, b)))
        else:
            s = runner.score(runner.encode(a), runner.encode(b), mode).float().numpy()
        if keep:
            scores.extend(np.asarray(s).tolist())

    def work(repeat: int) -> list[float]:
        lat = []
        for sl in chunks:
            t0 = time.perf_counter()
            serve(sl, keep=repeat == 0)
            lat.append(time.perf_counter() - t0)
        return lat

    def accuracy() -> list[tuple[str, str, float | None]]:
        gold = data["gold"]
        return [(mode, "spearman", spearmanr(scores, gold).statistic if gold is not None else None)]

    return Task(runner, "unique-pairs", None, work, lambda: serve(chunks[0], keep=False), accuracy,
                units=lambda r: len(data["a"]), extra={"latency_unit": f"chunk of {chunks[0].stop} pairs"})


def _one_vs_n_task(runner: Runner, mode: str, data: dict[str, Any], n: int, repeats: int,
                   teacher_top: dict[tuple[int, int], set[int]], is_reference: bool) -> Task:
    pool, qs = data["pool"][:n], data["queries"]
    k = min(TOP_K, n)
    state: dict[str, Any] = {"top": {}}
    # the teacher scores each query once over all repeats (query i in repeat i % repeats): at N = 1000 one query
    # is 1000 cross-encoder passes; a student serves every query in every repeat
    mine = (lambda r: [i for i in range(len(qs)) if i % repeats == r]) if runner.predict is not None else (
        lambda r: list(range(len(qs))))

    def candidates() -> torch.Tensor:
        if n not in runner.candidates:  # encoded once per model and N, shared by its scoring modes
            t0 = time.perf_counter()
            runner.candidates[n] = (runner.encode(pool), round(time.perf_counter() - t0, 4))
        state["candidate_encode_s"] = runner.candidates[n][1]
        return runner.candidates[n][0]

    def answer(i: int) -> set[int]:
        q = qs[i]
        if runner.predict is not None:
            s = torch.as_tensor(runner.predict([(q, c) for c in pool]))
        else:
            s = runner.score(runner.encode([q]), candidates(), mode)
        return set(torch.topk(s, k).indices.tolist())

    def work(repeat: int) -> list[float]:
        lat = []
        for i in mine(repeat):
            t0 = time.perf_counter()
            top = answer(i)
            lat.append(time.perf_counter() - t0)
            state["top"][i] = top
            if is_reference:
                teacher_top[(n, i)] = top
        return lat

    def warm() -> None:
        if runner.predict is None:
            candidates()
            answer(0)
        else:
            runner.predict([(qs[0], c) for c in pool[:8]])

    def accuracy() -> list[tuple[str, str, float | None]]:
        hits = [len(top & teacher_top[(n, i)]) / k for i, top in state["top"].items() if (n, i) in teacher_top]
        return [(mode, "recall@10_vs_teacher", float(np.mean(hits)) if hits else None)]

    task = Task(runner, "one-vs-n", n, work, warm, accuracy, units=lambda r: len(mine(r)))
    task.extra = state  # filled by the runs: candidate_encode_s
    return task


def _extrapolated(base: Task, n: int) -> Task:
    """A teacher row above `teacher_max_n`: latency scaled by N / measured N (cost is linear in N)."""
    scale = n / base.n

    def rows() -> list[dict[str, Any]]:
        out = []
        for row in base.rows():
            row = {**row, "n_candidates": n, "value": None, "extrapolated_from": base.n,
                   "throughput": None if row["throughput"] is None else round(row["throughput"] / scale, 4),
                   "p50_ms": None if row["p50_ms"] is None else round(row["p50_ms"] * scale, 3),
                   "p95_ms": None if row["p95_ms"] is None else round(row["p95_ms"] * scale, 3),
                   "spread": None if row["spread"] is None else [round(x / scale, 4) for x in row["spread"]],
                   "samples": [round(x / scale, 4) for x in row["samples"]]}
            out.append(row)
        return out

    task = Task(base.runner, "one-vs-n", n, lambda r: [], lambda: None, lambda: [], units=lambda r: 0)
    task.rows = rows  # type: ignore[method-assign]
    return task


def _skipped(role: str, model: str, backend: str, reason: str) -> dict[str, Any]:
    return {"role": role, "model": model, "backend": backend, "mode": None, "regime": None, "n_candidates": None,
            "throughput": None, "p50_ms": None, "p95_ms": None, "peak_rss_mb": None, "size_mb": None,
            "metric": None, "value": None, "spread": None, "skipped": reason}


# ---------------------------------------------------------------- accuracy extras


def _tatoeba(runners: list[Runner], langs: list[str], batch_size: int) -> list[dict[str, Any]]:
    """Bitext retrieval (accuracy@1 and nDCG@10, one relevant sentence) for each student runner."""
    out = []
    for lang in langs:
        from distill.data import DataError
        from distill.multilingual import read_tatoeba

        try:
            xx, en = read_tatoeba(lang)
        except DataError as err:
            raise BenchError(str(err)) from None
        for runner in runners:
            if runner.encode is None or runner.role != "student":
                continue
            ex, ee = runner.encode(xx), runner.encode(en)
            for direction, q, c in ((f"{lang[:3]}-eng", ex, ee), (f"eng-{lang[:3]}", ee, ex)):
                sims = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(c, dim=-1).T
                rank = (sims > sims.diagonal().unsqueeze(1)).sum(1)  # 0 = the translation is first
                ndcg = torch.where(rank < TOP_K, 1 / torch.log2(rank.float() + 2), torch.zeros_like(rank.float()))
                out.append({"model": runner.model, "backend": runner.backend, "direction": direction, "n": len(c),
                            "accuracy": round((rank == 0).float().mean().item(), 4),
                            "ndcg@10": round(ndcg.mean().item(), 4)})
    return out


# ---------------------------------------------------------------- report


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The speed ratios the README states, each from per-repeat samples of the same interleaved run."""

    def find(role: str, backend: str, regime: str, n: int | None = None, mode: str | None = None) -> dict | None:
        return next((r for r in rows if r["role"] == role and r["backend"] == backend and r["regime"] == regime
                     and r["n_candidates"] == n and (mode is None or r["mode"] == mode) and r.get("samples")
                     and not r.get("extrapolated_from")), None)

    def ratio(name: str, num: dict | None, den: dict | None, **info: Any) -> None:
        if not num or not den:
            return
        per = [a / b for a, b in zip(num["samples"], den["samples"]) if b]
        lo, hi, med = min(per), max(per), statistics.median(per)
        verdict = "win" if lo > 1 else "loss" if hi < 1 else "tie (spread overlaps 1.0)"
        out.append({"name": name, "median": round(med, 3), "spread": [round(lo, 3), round(hi, 3)],
                    "numerator": f"{num['role']} {num['backend']} {num['throughput']}",
                    "denominator": f"{den['role']} {den['backend']} {den['throughput']}", "verdict": verdict, **info})

    out: list[dict[str, Any]] = []
    up = "unique-pairs"
    ratio("student encode vs SentenceTransformer.encode (unique pairs, throughput)",
          find("student", "torch-fp32", up, mode="cosine"), find("st-student", "torch-fp32", up))
    ratio("teacher vs CrossEncoder.predict (unique pairs, throughput)",
          find("teacher", "torch-fp32", up), find("st-teacher", "torch-fp32", up))
    s32, s8 = find("student", "torch-fp32", up, mode="cosine"), find("student", "onnx-int8", up, mode="cosine")
    if s32 and s8:
        delta = None if s8["value"] is None or s32["value"] is None else round(s8["value"] - s32["value"], 4)
        ratio("student ONNX int8 vs torch fp32 (unique pairs, throughput)", s8, s32, spearman_delta=delta)
    ratio("student vs teacher, unique pairs (throughput)", find("student", "torch-fp32", up, mode="cosine"),
          find("teacher", "torch-fp32", up))
    ns = sorted({r["n_candidates"] for r in rows if r["regime"] == "one-vs-n" and r.get("samples")})
    for n in ns:
        student = find("student", "torch-fp32", "one-vs-n", n, mode="cosine")
        ratio(f"one query vs {n}: student vs SentenceTransformer (encode + dot + top-k), queries/s", student,
              find("st-student", "torch-fp32", "one-vs-n", n))
        teachers = [r for r in rows if r["role"] == "teacher" and r["regime"] == "one-vs-n" and r["n_candidates"] == n
                    and r.get("samples") and not r.get("extrapolated_from")]
        if teachers:
            fastest = max(teachers, key=lambda r: r["throughput"])
            ratio(f"one query vs {n}: student vs teacher at its fastest ({fastest['backend']}), queries/s", student,
                  fastest, recall_at_10=student["value"] if student else None)
            own = [r for r in rows if r["role"] == "student" and r["regime"] == "one-vs-n" and r["n_candidates"] == n
                   and r.get("samples") and r["mode"] == "cosine"]
            quickest = max(own, key=lambda r: r["throughput"]) if own else None
            if quickest and quickest is not student:
                ratio(f"one query vs {n}: student at its fastest ({quickest['backend']}) vs teacher at its fastest "
                      f"({fastest['backend']}), queries/s", quickest, fastest, recall_at_10=quickest["value"])
    return out


def _meta(data: dict[str, Any], threads: int, repeats: int, batch_size: int, chunk: int, queries: int,
          folders: dict[str, dict[str, Any]], base_rss: float, teacher_max_n: int) -> dict[str, Any]:
    import importlib.metadata as md

    from distill.quickstart import cpu_name

    cpu = cpu_name()
    versions = {}
    for pkg in ("torch", "transformers", "onnxruntime", "sentence-transformers", "distill"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
                        "python": platform.python_version(), "bf16": _bf16_reason() or "native"},
            "versions": versions, "models": folders, "pairs": data["source"], "n_pairs": len(data["a"]),
            "queries": len(data.get("queries", [])), "candidate_pool": data.get("pool_source"),
            "repeats": repeats, "warm_up": "one untimed pass per row", "batch_size": batch_size,
            "chunk_pairs": chunk, "teacher_max_n": teacher_max_n, "base_rss_mb": round(base_rss, 1),
            "notes": ["throughput: pairs/s (unique-pairs), queries/s (one-vs-n); medians over interleaved repeats, "
                      "spread = [min, max] over repeats",
                      "one-vs-n latency: one query, including tokenising and encoding it; the candidates' encoding "
                      "is a one-off cost (candidate_encode_s)",
                      "the teacher serves each query once across the repeats (query i in repeat i mod repeats)",
                      "peak_rss_mb: memory the row adds to the process (model load + peak while serving)",
                      "recall@10_vs_teacher: share of the teacher's top 10 (same candidates) in the model's top 10"]}


def markdown(report: dict[str, Any]) -> str:
    """The report people read: setup, the table, the ratios, the plot."""
    meta = report["meta"]
    lines = ["# distill bench", "",
             f"{meta['date']} · {meta['machine']['cpu']} · {meta['machine']['threads']} threads · "
             + " · ".join(f"{k} {v}" for k, v in meta["versions"].items() if v), "",
             f"Pairs: {meta['pairs']} ({meta['n_pairs']}); one-vs-n: {meta['queries']} queries, candidates: "
             f"{meta['candidate_pool']}; {meta['repeats']} interleaved repeats after a warm-up; batch "
             f"{meta['batch_size']}.", "",
             "| role | model | backend | mode | regime | N | throughput | spread | p50 ms | p95 ms | RSS MB | "
             "size MB | metric | value |", "|" + "---|" * 14]
    for r in report["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['role']} | {r['model']} | {r['backend']} | — | — | — | skipped: {r['skipped']} "
                         f"| | | | | | | |")
            continue
        unit = "pairs/s" if r["regime"] == "unique-pairs" else "q/s"
        note = f" (extrapolated from N={r['extrapolated_from']})" if r.get("extrapolated_from") else ""
        value = "—" if r["value"] is None else f"{r['value']:.4f}"
        spread = "—" if not r.get("spread") else f"{r['spread'][0]:.4g}–{r['spread'][1]:.4g}"
        lines.append(f"| {r['role']} | {r['model']} | {r['backend']} | {r['mode']} | {r['regime']} | "
                     f"{r['n_candidates'] or '—'} | {r['throughput']:.4g} {unit}{note} | {spread} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['peak_rss_mb']} | {r['size_mb']} | {r['metric']} | {value} |")
    lines += ["", "## Ratios (per-repeat ratios of the same run: median, [min, max])", "",
              "| ratio | median | spread | verdict | extra |", "|---|---|---|---|---|"]
    for q in report["ratios"]:
        extra = ", ".join(f"{k}={v}" for k, v in q.items()
                          if k not in ("name", "median", "spread", "numerator", "denominator", "verdict"))
        lines.append(f"| {q['name']} | {q['median']}× | {q['spread'][0]}–{q['spread'][1]} | {q['verdict']} | "
                     f"{extra} |")
    if report.get("tatoeba"):
        lines += ["", "## Tatoeba bitext retrieval", "", "| model | backend | direction | N | accuracy | nDCG@10 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t['model']} | {t['backend']} | {t['direction']} | {t['n']} | {t['accuracy']} | "
                  f"{t['ndcg@10']} |" for t in report["tatoeba"]]
    lines += ["", "Notes: " + "; ".join(meta["notes"]) + ".", "", "![pareto](pareto.png)", ""]
    return "\n".join(lines)


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput (log) against accuracy per regime, the Pareto front marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("distill bench: matplotlib is not installed; no pareto.png (pip install 'distill[all]')")
        return
    panels = [("unique-pairs", None, "STS Spearman", "pairs/s")]
    ns = sorted({r["n_candidates"] for r in rows if r["regime"] == "one-vs-n" and r["value"] is not None})
    if ns:
        panels.append(("one-vs-n", ns[-1], f"recall@10 of the teacher's top 10 (N={ns[-1]})", "queries/s"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 3, 4.8), squeeze=False)
    # colour = who (distill or sentence-transformers, teacher or student), marker = backend, hollow = DSE head
    colours = {"teacher": "tab:red", "st-teacher": "tab:orange", "student": "tab:blue", "st-student": "tab:cyan"}
    markers = {"torch-fp32": "o", "torch-bf16": "s", "onnx-fp32": "^", "onnx-int8": "D"}
    handles: dict[str, Any] = {}
    for ax, (regime, n, ylabel, unit) in zip(axes[0], panels):
        pts = [r for r in rows if r["regime"] == regime and r["n_candidates"] == n and r["value"] is not None
               and r["throughput"]]
        for r in pts:
            label = f"{r['role']} {r['backend']}" + (" (DSE head)" if r["mode"] == "dse_head" else "")
            colour = colours.get(r["role"], "k")
            handles[label] = ax.scatter(r["throughput"], r["value"], s=55, zorder=3, marker=markers[r["backend"]],
                                        facecolors="none" if r["mode"] == "dse_head" else colour,
                                        edgecolors=colour, linewidths=1.5, label=label)
        front, best = [], -np.inf
        for r in sorted(pts, key=lambda r: (-r["throughput"], -r["value"])):
            if r["value"] > best:
                front.append(r)
                best = r["value"]
        if front:
            handles["Pareto front"] = ax.plot([r["throughput"] for r in front], [r["value"] for r in front], "--",
                                              color="grey", zorder=2, label="Pareto front")[0]
        ax.set_xscale("log")
        ax.set_xlabel(f"throughput ({unit}, log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(regime if n is None else f"{regime}, N = {n}")
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / (6 * len(panels) + 3), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
