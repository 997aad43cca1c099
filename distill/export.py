"""`distill export`: a trained student or teacher as a folder that production tools load without distill.

Student folder: transformers (`AutoModel`/`AutoTokenizer`) + sentence-transformers config (pooling, normalisation,
prompt prefix, max length, cosine similarity) at the root; `dse_head.safetensors` + `dse_head.py` (a torch-only
loader) when trained with the DSE head; `onnx/model.onnx` and `onnx/model_qint8.onnx` on request; `README.md`
(model card) and `export_report.json` (parity figures). Teacher folder: a transformers sequence-classification
model that sentence-transformers loads as a `CrossEncoder`. The folder is written beside the target and moved into
place only after every parity check passed, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from distill import catalog, onnx_backend, outdir, serving, tracking
from distill.checkpoints import load_model, read_checkpoint
from distill.losses.matryoshka import resolve_points
from distill.names import (
    COSINE,
    DSE_HEAD,
    DSE_HEAD_CONFIG,
    DSE_HEAD_LOADER,
    EXPORT_REPORT,
    INT8_FILE,
    MODEL_CARD,
    ONNX_FILE,
    STUDENT_CONFIG,
)
from distill.st_modules import write_sentence_transformers_config, write_static_sentence_transformers_config
from students import StaticStudent

ST_HINT = "pip install 'distill[export]'"
# texts of several lengths and scripts: parity must hold beyond the one short sentence a trace saw
PROBES = [
    "A person strums a guitar on stage.",
    "Two dogs run through a field of tall grass while the sun sets behind the hills.",
    "The central bank left interest rates unchanged on Thursday, citing uncertainty about inflation.",
    "ok",
    "Eine Person spielt auf der Bühne Gitarre.",
    "Un homme joue de la guitare dans la rue.",
]
ONNX_TOLERANCE = 1e-4  # max abs difference of fp32 ONNX embeddings from torch's
ST_MIN_COSINE = 0.9999  # sentence-transformers' embeddings vs distill's
# int8 is lossy: checked against the project's bar (|Δ Spearman| on STS-B dev vs fp32) and for gross breakage
INT8_SPEARMAN_DELTA = 0.01  # all-MiniLM-L6-v2 as a student: -0.0046
INT8_MIN_COSINE = 0.8  # int8 vs torch embeddings, min over the probes; all-MiniLM-L6-v2: 0.865 (on "ok")
# int8 vs fp32 teacher scores in [0, 1] on dev pairs, mean abs difference: the max has heavy tails (a MiniLM-L6
# cross-encoder, STS-B dev Spearman 0.886: mean 0.027, max 0.356, ΔSpearman -0.0063)
INT8_MEAN_SCORE_DIFF = 0.1
# a Spearman delta of scores that vary less than int8's own noise (an untrained or tiny teacher) is a coin toss
INT8_MIN_SCORE_SPREAD = 1e-3  # std of the fp32 scores on dev pairs

DSE_LOADER = f'''"""Load the DSE pair head saved beside this encoder; needs only torch and safetensors.

    from dse_head import load_dse_head
    head = load_dse_head("path/to/this/folder")
    score = head(u, v)  # u, v: (batch, dim) sentence embeddings -> (batch,) scores in [0, 1]
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


class DSEHead(torch.nn.Module):
    """sigmoid(MLP([u; v; u*v; |u-v|])): Barkan et al., AAAI 2020, "Distilled Sentence Embedding"."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4 * dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        features = torch.cat([u, v, u * v, (u - v).abs()], dim=-1)
        return torch.sigmoid(self.mlp(features).squeeze(-1))


def load_dse_head(folder: str) -> DSEHead:
    config = json.loads((Path(folder) / "{DSE_HEAD_CONFIG}").read_text())
    head = DSEHead(config["dim"], config["hidden"])
    head.load_state_dict(load_file(str(Path(folder) / "{DSE_HEAD}")))
    return head.eval()
'''


class ExportError(ValueError):
    """An export that cannot be written or fails its parity checks; the message names the file and the fix."""


def main(ckpt: str, out: str, onnx: bool = False, int8: bool = False, overwrite: bool = False, runs: str = "runs",
         wandb_run: str | None = None, layers: int | None = None, dims: int | None = None) -> Path:
    """Export a student or teacher checkpoint for production: sentence-transformers/transformers folder, ONNX, int8.

    Args:
        ckpt: a checkpoint `distill fit` wrote (a student's or a teacher's; the kind is read from it), or a W&B
            run (`entity/project/run_id`, or its id) or sweep (`entity/project/sweeps/<id>`: its best run).
        out: the folder to write.
        onnx: also write `onnx/model.onnx` (fp32), parity-checked against torch.
        int8: also write `onnx/model_qint8.onnx` (dynamic int8 quantisation; implies --onnx), checked against
            torch on STS-B dev (|ΔSpearman| within 0.01; student: min cosine on probes, teacher: mean score
            difference); a failed check refuses the export.
        overwrite: replace `out` if it exists.
        runs: where W&B runs wrote their checkpoints (`trainer.logger.init_args.save_dir`).
        wandb_run: log the exported folder as a W&B model artifact to this run (`entity/project/run_id`).
        layers: export the student at this many encoder layers (a point trained with distill.losses.Matryoshka2D;
            default: all of them).
        dims: export the student at this many leading embedding dimensions, renormalised (a Matryoshka2D point;
            default: the full width); sentence-transformers' folder cuts them with a Dense slice and records
            `truncate_dim`.
    """
    ckpt = str(tracking.best_checkpoint(ckpt, root=runs))
    target = Path(out)
    try:  # never replace a folder export did not write, nor the one holding the checkpoint
        outdir.check_out(target, EXPORT_REPORT, "distill export", overwrite, keep=[Path(ckpt)])
    except outdir.OutDirError as err:
        raise ExportError(str(err)) from None
    kind, model, meta = load_model(ckpt)
    if layers is not None or dims is not None:
        model = at_point(kind, model, meta, layers, dims, onnx or int8)
    meta["ckpt"] = str(ckpt)
    meta["training_data"] = training_data(read_checkpoint(ckpt).get("datamodule_hyper_parameters") or {})
    partial = outdir.partial_dir(target)
    try:
        write = (export_static if isinstance(model, StaticStudent) else export_student) if kind == "student" \
            else export_teacher
        report = write(model, partial, meta, onnx=onnx or int8, int8=int8)
        outdir.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"distill export: {kind} -> {target}  " + "  ".join(f"{k}={v}" for k, v in report["checks"].items()))
    if wandb_run:
        with tracking.logging_to(wandb_run) as run:
            tracking.log_artifact(target, f"{kind}-{target.name}", "model", run=run)
    return target


def trained_points(hp: dict[str, Any], depth: int, width: int) -> list[tuple[int, int]]:
    """The (layers, dims) points a checkpoint's Matryoshka2D objectives trained (with a weight > 0), resolved
    against the student; the full student is always one."""
    points = [(depth, width)]
    for spec in (hp.get("objectives") or {}).values():
        args = spec.get("init_args", {}) if isinstance(spec, dict) else {}
        if str(spec.get("class_path", "") if isinstance(spec, dict) else "").endswith("Matryoshka2D") \
                and args.get("weight", 1.0) != 0:
            points += [p for p in resolve_points(args.get("points") or [], depth, width) if p not in points]
    return points


def at_point(kind: str, student: Any, meta: dict[str, Any], layers: int | None, dims: int | None,
             onnx: bool) -> Any:
    """The student cut to a trained (layers, dims) point (`--layers`, `--dims`); anything else is one line."""
    if kind != "student" or isinstance(student, StaticStudent):
        raise ExportError(f"--layers/--dims export a bi-encoder student at a Matryoshka point; this checkpoint holds "
                          f"a {'teacher' if kind != 'student' else 'static student'}: drop them")
    point = (student.depth if layers is None else layers, student.width if dims is None else dims)
    trained = trained_points(meta.get("hyper_parameters", {}), student.depth, student.width)
    if point not in trained:
        shown = ", ".join(f"--layers {n} --dims {d}" for n, d in trained)
        raise ExportError(f"point layers={point[0]}, dims={point[1]} was not trained by this checkpoint (its "
                          f"distill.losses.Matryoshka2D points); export one of: {shown}")
    if onnx and point[1] < student.width:
        raise ExportError(f"--onnx at --dims {point[1]}: distill.serving does not cut ONNX embeddings yet, so the "
                          f"parity check cannot pass; export this point without --onnx/--int8")
    if point == (student.depth, student.width):
        return student
    if student.head is not None:
        meta["selected_mode"] = COSINE  # the DSE head reads full embeddings: a point is scored by cosine
    return student.at_point(*point).eval()


def training_data(hp: dict[str, Any]) -> list[dict[str, str]]:
    """The data a checkpoint was trained on (its datamodule's init args), each with its licence (from the catalog
    for catalog names), for the model card."""
    train = hp.get("train")
    if train is None and hp.get("languages"):  # the multilingual datamodule: stsb_multi_mt in these languages
        train = [f"stsb_multi_mt/{lang}/train" for lang in hp["languages"]]
    sources = [train] if isinstance(train, str) else list(train or [])
    return [{"source": str(s), "licence": catalog.licence(str(s))} for s in sources]


def _sentence_transformers() -> Any:
    try:
        import sentence_transformers
    except ImportError:
        raise ImportError(f"distill export writes sentence-transformers folders: {ST_HINT}") from None
    return sentence_transformers


def export_student(student: Any, folder: Path, meta: dict[str, Any], onnx: bool = False,
                   int8: bool = False) -> dict[str, Any]:
    """Write a `students.BiEncoder` as a sentence-transformers folder (+ DSE head, ONNX); returns the report."""
    st = _sentence_transformers()
    cfg = student.config
    student.save_pretrained(folder)  # encoder, tokenizer, distill_student.json, dse_head.safetensors
    takes_flag = "add_pooling_layer" in inspect.signature(type(student.encoder)).parameters
    pooled = any(k.startswith("pooler.") for k in student.encoder.state_dict())
    write_sentence_transformers_config(folder, cfg, student.width, no_pooler=takes_flag and not pooled)
    config = {**cfg, "selected_mode": meta.get("selected_mode", COSINE)}
    (folder / STUDENT_CONFIG).write_text(json.dumps(config, indent=2))
    if student.head is not None:
        first = student.head.mlp[0]
        (folder / DSE_HEAD_CONFIG).write_text(json.dumps(
            {"dim": first.in_features // 4, "hidden": first.out_features, "inputs": "[u; v; u*v; |u-v|]",
             "output": "sigmoid", "reference": "Barkan et al., AAAI 2020, arXiv:1908.05161"}, indent=2))
        (folder / DSE_HEAD_LOADER).write_text(DSE_LOADER)

    reference = student.encode(PROBES)
    loaded = st.SentenceTransformer(str(folder), device="cpu").encode(PROBES, convert_to_tensor=True).float()
    cos = torch.nn.functional.cosine_similarity(reference, loaded, dim=-1).min().item()
    if cos < ST_MIN_COSINE:
        raise ExportError(f"{folder}: sentence-transformers' embeddings differ from distill's (min cosine {cos:.6f} "
                          f"< {ST_MIN_COSINE}); the folder was not written")
    checks: dict[str, Any] = {"st_min_cosine": round(cos, 6)}
    if onnx:
        checks.update(_student_onnx(student, folder, reference, int8))
    report = {"kind": "student", "ckpt": meta.get("ckpt"), "training_data": meta.get("training_data"),
              "config": config, "checks": checks,
              "files": _sizes(folder), "hyper_parameters": _plain(meta.get("hyper_parameters", {}))}
    (folder / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
    write_card(folder, report)
    return report


def export_static(student: StaticStudent, folder: Path, meta: dict[str, Any], onnx: bool = False,
                  int8: bool = False) -> dict[str, Any]:
    """Write a `students.StaticStudent` as a sentence-transformers `StaticEmbedding` folder; returns the report."""
    if onnx or int8:
        raise ExportError("a static student is a table lookup with no ONNX graph to gain from: export it without "
                          "--onnx/--int8")
    st = _sentence_transformers()
    student.save_pretrained(folder)  # tokenizer.json, model.safetensors (embedding.weight), distill_student.json
    write_static_sentence_transformers_config(folder, student.config)
    config = {**student.config, "selected_mode": COSINE}
    (folder / STUDENT_CONFIG).write_text(json.dumps(config, indent=2))
    reference = student.encode(PROBES)
    loaded = st.SentenceTransformer(str(folder), device="cpu").encode(PROBES, convert_to_tensor=True).float()
    diff = (loaded - reference).abs().max().item()
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"{folder}: sentence-transformers' StaticEmbedding embeddings differ from distill's by "
                          f"{diff:.2e}; the folder was not written")
    report = {"kind": "student", "ckpt": meta.get("ckpt"), "training_data": meta.get("training_data"),
              "config": config, "checks": {"st_max_abs_diff": float(f"{diff:.3g}")}, "files": _sizes(folder),
              "hyper_parameters": _plain(meta.get("hyper_parameters", {}))}
    (folder / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
    write_card(folder, report)
    return report


def _parity(diff: float, folder: Path, what: str) -> dict[str, Any]:
    """The fp32 ONNX file's largest difference from torch, refused above the tolerance (nothing is written)."""
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"{folder / ONNX_FILE}: ONNX {what} differ from torch's by {diff:.2e} "
                          f"(> {ONNX_TOLERANCE}); the folder was not written")
    return {"onnx_max_abs_diff": float(f"{diff:.3g}")}


def _student_onnx(student: Any, folder: Path, reference: torch.Tensor, int8: bool) -> dict[str, Any]:
    onnx_backend.export_onnx(student.encoder, student.tokenizer, folder / ONNX_FILE, "last_hidden_state")
    fp32 = serving.OnnxServer(folder, student.config, ONNX_FILE, None)  # what `distill.serving` will serve
    checks = _parity((fp32.encode(PROBES) - reference).abs().max().item(), folder, "embeddings")
    if int8:
        onnx_backend.quantize_int8(folder / ONNX_FILE, folder / INT8_FILE)
        q8 = serving.OnnxServer(folder, student.config, INT8_FILE, None)
        pairs = _dev_pairs()
        rho = {}
        for name, enc in (("fp32", fp32), ("int8", q8)):
            u, v = enc.encode(pairs["a"]), enc.encode(pairs["b"])
            rho[name] = spearmanr(torch.nn.functional.cosine_similarity(u, v).numpy(), pairs["gold"]).statistic
        cos = torch.nn.functional.cosine_similarity(q8.encode(PROBES), reference, dim=-1).min().item()
        checks.update(_int8_checks(folder, {"int8_min_cosine": (cos, INT8_MIN_COSINE),
                                            "int8_spearman_delta": (rho["int8"] - rho["fp32"], INT8_SPEARMAN_DELTA)}))
        checks["int8_checked_on"] = f"STS-B dev, first {len(pairs['a'])} pairs, cosine; min cosine on the probes"
    return checks


def export_teacher(teacher: Any, folder: Path, meta: dict[str, Any], onnx: bool = False,
                   int8: bool = False) -> dict[str, Any]:
    """Write a `teachers.CrossEncoder` as a transformers sequence-classification folder that sentence-transformers
    loads as a `CrossEncoder`; returns the report."""
    st = _sentence_transformers()
    from transformers import AutoTokenizer

    if not teacher.regression:
        raise ExportError("only regression teachers (num_labels=1) export as a sentence-transformers CrossEncoder")
    given = {k: teacher.hparams[k] for k in ("prefix", "document_prefix") if teacher.hparams.get(k)}
    if given:
        raise ExportError(f"this teacher prepends {given} to its texts, which sentence-transformers' CrossEncoder "
                          f"export cannot carry (its prompts go before the query only): export teachers trained "
                          f"without prefixes")
    folder.mkdir(parents=True)
    teacher.model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(teacher.backbone_path)
    tokenizer.save_pretrained(folder)
    max_length = teacher.hparams.max_length
    st.CrossEncoder(str(folder), device="cpu", max_length=max_length,
                    activation_fn=torch.nn.Sigmoid()).save_pretrained(str(folder))
    pairs = list(zip(PROBES, PROBES[1:] + PROBES[:1]))
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        reference = torch.sigmoid(teacher.model(**enc).logits.squeeze(-1))
    loaded = torch.as_tensor(st.CrossEncoder(str(folder), device="cpu").predict(pairs))
    diff = (loaded - reference).abs().max().item()
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"{folder}: sentence-transformers' CrossEncoder scores differ from distill's by {diff:.2e}; "
                          f"the folder was not written")
    checks: dict[str, Any] = {"st_max_abs_diff": float(f"{diff:.3g}")}
    if onnx:
        checks.update(_teacher_onnx(teacher.model, tokenizer, folder, pairs, reference, max_length, int8))
    report = {"kind": "teacher", "ckpt": meta.get("ckpt"), "training_data": meta.get("training_data"),
              "config": {"max_length": max_length}, "checks": checks,
              "files": _sizes(folder), "hyper_parameters": _plain(meta.get("hyper_parameters", {}))}
    (folder / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
    write_card(folder, report)
    return report


def _teacher_onnx(model: Any, tokenizer: Any, folder: Path, pairs: list[tuple[str, str]], reference: torch.Tensor,
                  max_length: int, int8: bool) -> dict[str, Any]:
    onnx_backend.export_onnx(model, tokenizer, folder / ONNX_FILE, "logits")
    served = onnx_backend.OnnxCrossEncoder(folder, ONNX_FILE, max_length)
    checks = _parity(float(abs(served.predict(pairs) - reference.numpy()).max()), folder, "scores")
    if int8:
        onnx_backend.quantize_int8(folder / ONNX_FILE, folder / INT8_FILE)
        q8 = onnx_backend.OnnxCrossEncoder(folder, INT8_FILE, max_length)
        dev = _dev_pairs()
        dev_pairs = list(zip(dev["a"], dev["b"]))
        scores = {"fp32": served.predict(dev_pairs), "int8": q8.predict(dev_pairs)}
        rho = {k: spearmanr(v, dev["gold"]).statistic for k, v in scores.items()}
        diff = abs(scores["int8"] - scores["fp32"])
        measured = {"int8_mean_abs_diff": (float(diff.mean()), INT8_MEAN_SCORE_DIFF)}
        spread = float(scores["fp32"].std())
        if spread >= INT8_MIN_SCORE_SPREAD:
            measured["int8_spearman_delta"] = (rho["int8"] - rho["fp32"], INT8_SPEARMAN_DELTA)
        checks.update(_int8_checks(folder, measured), int8_max_abs_diff=round(float(diff.max()), 4))
        checks["int8_checked_on"] = (f"STS-B dev, first {len(dev_pairs)} pairs, against the fp32 ONNX scores"
                                     + ("" if "int8_spearman_delta" in measured else
                                        f"; Spearman not checked: the scores' std is {spread:.1e}"))
    return checks


def _int8_checks(folder: Path, measured: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each (value, limit) within its limit (a minimum for `min_` checks, else a bound on the absolute value), or a
    one-line refusal naming the check; a NaN fails both."""
    for name, (value, limit) in measured.items():
        if not (value >= limit if "_min_" in name else abs(value) <= limit):
            raise ExportError(f"{folder / INT8_FILE}: int8 check {name} is {value:.4g}, beyond its limit "
                              f"{limit}; the folder was not written: export without --int8 (fp32 ONNX passed)")
    return {name: round(float(value), 4) for name, (value, _) in measured.items()}


def _dev_pairs(limit: int = 500) -> dict[str, list]:
    from distill.data import read_pairs

    rows, _ = read_pairs("stsb/dev")
    n = min(limit, len(rows))
    return {"a": rows["text_a"][:n], "b": rows["text_b"][:n], "gold": rows["label"][:n]}


def _sizes(folder: Path) -> dict[str, float]:
    """MB on disk of the weight files."""
    return {str(p.relative_to(folder)): round(p.stat().st_size / 1e6, 2) for p in sorted(folder.rglob("*"))
            if p.suffix in (".safetensors", ".onnx")}


def _plain(value: Any) -> Any:
    # checkpoint hyperparameters may hold objects from jsonargparse; the report keeps JSON types
    return json.loads(json.dumps(value, default=str))


def _data_lines(data: list[dict[str, str]] | None) -> list[str]:
    if not data:
        return ["Not recorded in the checkpoint: see the recipe above.", ""]
    return ["| data | licence |", "|---|---|", *(f"| `{d['source']}` | {d['licence']} |" for d in data), ""]


def write_card(folder: Path, report: dict[str, Any], bench_rows: list[dict[str, Any]] | None = None) -> None:
    """The model card (README.md): what the model is, how it was trained, how to load it, what was measured."""
    student = report["kind"] == "student"
    hp = report.get("hyper_parameters", {})
    config = report.get("config", {})
    lines = ["---", f"library_name: {'sentence-transformers' if student else 'transformers'}",
             f"pipeline_tag: {'sentence-similarity' if student else 'text-ranking'}",
             "tags: [distill, sentence-transformers, " + ("bi-encoder" if student else "cross-encoder") + "]",
             "license: apache-2.0  # that of the shipped backbones; check yours and your training data's",
             "---", "",
             f"# {'Distilled bi-encoder' if student else 'Cross-encoder teacher'} (distill)", ""]
    if student:
        lines += ["A sentence encoder distilled from a cross-encoder teacher with "
                  "[distill](https://pypi.org/project/distill/) (Distilled Sentence Embedding, Barkan et al., AAAI "
                  "2020): each text is embedded once and pairs are compared by cosine"
                  + (" or by the DSE pair head saved beside the encoder" if config.get("dse_head") else "") + ".", "",
                  "```python", "from sentence_transformers import SentenceTransformer",
                  "model = SentenceTransformer('path/to/this/folder')",
                  "embeddings = model.encode(['A person strums a guitar on stage.', 'Someone plays an instrument.'])",
                  "print(model.similarity(embeddings[:1], embeddings[1:]))", "```", ""]
        if config.get("dse_head"):
            lines += ["DSE pair head (torch only): `from dse_head import load_dse_head; "
                      "head = load_dse_head('path/to/this/folder'); score = head(u, v)`.", ""]
        if config.get("kind") == "static":
            lines += ["A static student: each token has one vector (from a transformer's, by PCA and Zipf weighting, "
                      "then trained), and a text is the mean of its tokens' vectors; no attention.", ""]
        lines += [f"Pooling: {config.get('pooling', 'mean of token vectors')}; normalised: {config.get('normalize')}; "
                  f"max tokens: "
                  f"{config.get('max_seq_length')}; prefix: {config.get('prefix')!r}; scoring mode chosen on dev: "
                  f"{config.get('selected_mode')}.", ""]
    else:
        lines += ["A cross-encoder that scores a sentence pair in [0, 1] (sigmoid of one logit).", "",
                  "```python", "from sentence_transformers import CrossEncoder",
                  "model = CrossEncoder('path/to/this/folder')",
                  "print(model.predict([('A person strums a guitar on stage.', 'Someone plays an instrument.')]))",
                  "```", ""]
    lines += ["## Recipe", "", f"Checkpoint: `{report.get('ckpt')}`.", "", "```json",
              json.dumps(hp, indent=2, default=str)[:4000], "```", "",
              "## Training data", "", *_data_lines(report.get("training_data")),
              "Backbone licence: that of the backbone named in the recipe (all-MiniLM-L6-v2 and all-mpnet-base-v2: "
              "Apache-2.0; multilingual-e5-small: MIT).", "",
              "## Export checks", "", "| check | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.get("checks", {}).items()]
    lines += ["", "Files (MB): " + ", ".join(f"`{k}` {v}" for k, v in report.get("files", {}).items()), ""]
    if bench_rows:
        lines += ["## Measured by `distill bench`", "",
                  "| regime | N | backend | mode | throughput | p50 ms | p95 ms | metric | value |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in bench_rows:
            value = "—" if r.get("value") is None else f"{r['value']:.4f}"
            lines.append(f"| {r['regime']} | {r.get('n_candidates') or '—'} | {r['backend']} | {r['mode']} | "
                         f"{r['throughput']:.1f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['metric']} | {value} |")
        lines.append("")
    (folder / MODEL_CARD).write_text("\n".join(lines))
