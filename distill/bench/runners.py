"""What `distill bench` runs: each model on each backend, behind one small interface (`Runner`).

A student is served by `encode(texts)` (torch fp32/bf16, ONNX Runtime fp32/int8, or sentence-transformers'
`SentenceTransformer.encode` on the same weights: `st-student`); a teacher by `predict(pairs)` (torch, ONNX
Runtime, or `CrossEncoder.predict`: `st-teacher`). Checkpoints are first exported into folders (`prepare`), so
every backend reads the same files a user would ship.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import export as exporting
from distill import names, onnx_backend, serving
from distill.bench.timing import RssSampler
from distill.checkpoints import CheckpointError, read_checkpoint
from distill.machine import bf16_reason

BACKENDS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")
TORCH_WEIGHTS = "model.safetensors"  # transformers' file name
DEFAULT_MAX_LENGTH = 512  # a teacher folder without an export report: the usual encoder limit


class BenchError(ValueError):
    """A bench config that cannot run; the message names the key and the fix."""


# ---------------------------------------------------------------- the folders benched


def prepare(teacher: str | None, students: list[str], out_dir: Path, backends: list[str],
            teacher_backends: list[str]) -> dict[str, dict[str, Any]]:
    """name -> exported folder: checkpoints are exported once into `out/models/` (with ONNX when asked for)."""
    folders: dict[str, dict[str, Any]] = {}
    specs = ([("teacher", "teacher", teacher)] if teacher else []) + [
        ("student", "student" if len(students) == 1 else f"student-{i + 1}", s) for i, s in enumerate(students)]
    for role, name, path in specs:
        wanted = teacher_backends if role == "teacher" else backends
        folder = Path(path)
        if folder.is_dir():
            is_student = (folder / names.STUDENT_CONFIG).is_file()
            if is_student != (role == "student"):
                raise BenchError(f"{path} is a {'student' if is_student else 'teacher'} folder, given as the "
                                 f"{role}; swap `teacher` and `students`")
        else:
            kind = checkpoint_kind(path)
            if kind != role:
                raise BenchError(f"{path} is a {kind} checkpoint, given as the {role}; swap `teacher` and `students`")
            folder = out_dir / "models" / name
            exporting.main(str(path), str(folder), onnx=any(b.startswith("onnx") for b in wanted),
                           int8="onnx-int8" in wanted, overwrite=True)
        folders[name] = {"role": role, "path": str(path), "folder": str(folder)}
    return folders


def checkpoint_kind(path: str) -> str:
    state = read_checkpoint(path)["state_dict"]
    if any(k.startswith("student.") for k in state):
        return "student"
    if any(k.startswith("model.") for k in state):
        return "teacher"
    raise CheckpointError(f"{path}: neither a teacher nor a student checkpoint; pass one `distill fit` wrote")


def onnx_file(backend: str) -> str:
    return names.INT8_FILE if backend == "onnx-int8" else names.ONNX_FILE


def skip_reason(info: dict[str, Any], backend: str) -> str | None:
    """Why a model is not measured on a backend (shown in its row), or None."""
    if serving.is_static(info["folder"]) and backend != "torch-fp32":
        return "a static student (a token table) serves on torch-fp32 only"
    if backend == "torch-bf16":
        return bf16_reason()
    if backend.startswith("onnx") and not (Path(info["folder"]) / onnx_file(backend)).is_file():
        return f"{info['folder']} has no {onnx_file(backend)}; export it with `distill export --onnx --int8`"
    return None


def skips(folders: dict[str, dict[str, Any]], backends: list[str],
          teacher_backends: list[str]) -> list[tuple[str, str, str, str]]:
    """(role, model, backend, reason) of every model × backend left out."""
    out = []
    for name, info in folders.items():
        for backend in teacher_backends if info["role"] == "teacher" else backends:
            reason = skip_reason(info, backend)
            if reason:
                out.append((info["role"], name, backend, reason))
    return out


# ---------------------------------------------------------------- one model on one backend


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
    query: Callable[[str], torch.Tensor] | None = None  # one text -> (dim,): the one-vs-n latency path
    encoder_config: dict[str, Any] | None = None  # hidden_size, intermediate_size, num_hidden_layers: the floor
    count_tokens: Callable[..., int] | None = None  # tokens of one text (students) or one pair (teachers)
    modes: tuple[str, ...] = (names.CROSS_ENCODER,)
    head: Any = None
    normalized: bool = True
    candidates: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)  # N -> (embeddings, seconds)

    def score(self, u: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
        """Pair scores of embeddings; `v` may hold many candidates against one `u`."""
        if mode == names.DSE:
            with torch.inference_mode():
                return self.head(u.expand_as(v) if len(u) == 1 else u, v)
        if self.normalized:
            return (u * v).sum(-1)
        return torch.nn.functional.cosine_similarity(u, v, dim=-1)

    def scoring_modes(self) -> tuple[str, ...]:
        # each scoring mode is its own row, timed alone: the DSE head costs an MLP pass per candidate, cosine a dot
        return (names.CROSS_ENCODER,) if self.predict is not None else self.modes


class TorchCrossEncoder:
    """A teacher folder's sigmoid scores in torch (transformers' sequence classification), fp32 or bf16."""

    def __init__(self, folder: Path, max_length: int, batch_size: int, bf16: bool) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.max_length, self.batch_size, self.bf16 = max_length, batch_size, bf16

    @torch.inference_mode()
    def __call__(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        # longest first, so each batch pads to similar lengths (sentence-transformers sorts the same way)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True,
                                 truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(**enc).logits.float().reshape(-1)
            out[idx] = torch.sigmoid(logits).numpy()
        return out


class STCrossEncoder:
    """The `st-teacher` baseline: sentence-transformers' `CrossEncoder.predict`, our batch size, no progress bar."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size

    def __call__(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.asarray(self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False))


def _mb(folder: Path, files: list[str]) -> float:
    return round(sum((folder / f).stat().st_size for f in files if (folder / f).is_file()) / 1e6, 2)


def _encoder_config(folder: Path) -> dict[str, Any] | None:
    if not (folder / "config.json").is_file():  # a static student: no transformer, no FLOP floor
        return None
    config = json.loads((folder / "config.json").read_text())
    return {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")}


def student_runners(name: str, info: dict[str, Any], backends: list[str], baselines: bool, threads: int,
                    batch_size: int, sampler: RssSampler) -> list[Runner]:
    """A student folder on each backend it can run on (`distill.serving`), then `st-student`
    (`SentenceTransformer.encode` on the same folder)."""
    folder = Path(info["folder"])
    config = json.loads((folder / names.STUDENT_CONFIG).read_text())
    head = None
    if config.get("dse_head"):
        from students import BiEncoder

        head = BiEncoder.from_pretrained(folder).head.eval()
    modes = (names.COSINE, names.DSE) if head is not None else (names.COSINE,)
    torch_mb = _mb(folder, [TORCH_WEIGHTS, names.DSE_HEAD])
    shape = _encoder_config(folder)
    runners = []
    for backend in backends:
        if skip_reason(info, backend):
            continue
        server, mb = sampler.load(serving.load, folder, backend, threads)
        size = torch_mb if backend.startswith("torch") else _mb(folder, [onnx_file(backend), names.DSE_HEAD])
        runners.append(Runner(role="student", model=name, backend=backend, modes=modes, head=head,
                              normalized=config["normalize"], size_mb=size, load_mb=mb,
                              encode=functools.partial(server.encode, batch_size=batch_size), query=server.query,
                              encoder_config=shape, count_tokens=lambda t, s=server: len(s.ids(t))))
    if baselines:
        runners.append(st_runner("st-student", name, str(folder), batch_size, sampler, torch_mb))
    return runners


def st_runner(role: str, name: str, folder: str, batch_size: int, sampler: RssSampler, size_mb: float) -> Runner:
    """A folder served by plain sentence-transformers (`encode`; one query is `encode(text)`): the `st-student`
    baseline on a student's own weights, or a `peer` a user would pick instead."""
    from sentence_transformers import SentenceTransformer

    st, mb = sampler.load(SentenceTransformer, folder, device="cpu")
    tokenizer = st.tokenizer
    normalized = any(type(m).__name__ == "Normalize" for m in st)
    return Runner(role=role, model=name, backend="torch-fp32", size_mb=size_mb, load_mb=mb, modes=(names.COSINE,),
                  normalized=normalized,
                  encode=functools.partial(st.encode, batch_size=batch_size, convert_to_tensor=True),
                  query=functools.partial(st.encode, convert_to_tensor=True),
                  encoder_config=_encoder_config(Path(folder)),
                  count_tokens=lambda t: len(tokenizer(t, truncation=True, max_length=st.max_seq_length)["input_ids"]))


def peer_runners(peers: list[str], batch_size: int, sampler: RssSampler) -> list[Runner]:
    """The models a user would pick instead, served by plain sentence-transformers (`role: peer`)."""
    from distill.backbones import resolve

    out = []
    for peer in peers:
        folder = Path(resolve(peer))
        out.append(st_runner("peer", peer, str(folder), batch_size, sampler, _mb(folder, [TORCH_WEIGHTS])))
    return out


def teacher_runners(name: str, info: dict[str, Any], backends: list[str], baselines: bool, threads: int,
                    batch_size: int, sampler: RssSampler) -> list[Runner]:
    """A teacher folder on each backend it can run on, then `st-teacher` (`CrossEncoder.predict`)."""
    folder = Path(info["folder"])
    report = folder / names.EXPORT_REPORT
    max_length = json.loads(report.read_text())["config"]["max_length"] if report.is_file() else DEFAULT_MAX_LENGTH
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    shape = dict(encoder_config=_encoder_config(folder), count_tokens=lambda a, b: len(
        tokenizer(a, b, truncation=True, max_length=max_length)["input_ids"]))
    runners = []
    for backend in backends:
        if skip_reason(info, backend):
            continue
        if backend.startswith("torch"):
            predict, mb = sampler.load(TorchCrossEncoder, folder, max_length, batch_size, backend == "torch-bf16")
            size = _mb(folder, [TORCH_WEIGHTS])
        else:
            served, mb = sampler.load(onnx_backend.OnnxCrossEncoder, folder, onnx_file(backend), max_length, threads)
            predict = functools.partial(served.predict, batch_size=batch_size)
            size = _mb(folder, [onnx_file(backend)])
        runners.append(Runner(role="teacher", model=name, backend=backend, size_mb=size, load_mb=mb, predict=predict,
                              **shape))
    if baselines:
        from sentence_transformers import CrossEncoder

        ce, mb = sampler.load(CrossEncoder, str(folder), device="cpu", max_length=max_length)
        runners.append(Runner(role="st-teacher", model=name, backend="torch-fp32",
                              size_mb=_mb(folder, [TORCH_WEIGHTS]), load_mb=mb, predict=STCrossEncoder(ce, batch_size)))
    return runners


def build_runners(folders: dict[str, dict[str, Any]], backends: list[str], teacher_backends: list[str],
                  baselines: bool, threads: int, batch_size: int, sampler: RssSampler,
                  peers: list[str] | None = None) -> list[Runner]:
    """Every model × backend to time, each model followed by its sentence-transformers baseline, then the peers."""
    runners = peer_runners(peers or [], batch_size, sampler)
    for name, info in folders.items():
        if info["role"] == "student":
            runners += student_runners(name, info, backends, baselines, threads, batch_size, sampler)
        else:
            runners += teacher_runners(name, info, teacher_backends, baselines, threads, batch_size, sampler)
    return runners
