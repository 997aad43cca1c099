"""End to end on real MiniLM weights and real STS-B rows (marked slow: CI runs it; `-m 'not slow'` skips)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from scipy.stats import spearmanr

from distill.cache import ScoreCache
from distill.cli import run
from distill.data import read_pairs
from distill.module import DistillModule

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.precision=bf16-mixed"]


def _slice(path: Path, start: int, end: int) -> str:
    rows = read_pairs("stsb/train")[0].select(range(start, end))
    pd.DataFrame({"text_a": rows["text_a"], "text_b": rows["text_b"], "label": rows["label"]}).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def real_setup(tmp_path_factory):
    """A MiniLM teacher fitted on 1000 STS-B train rows, its scores for a 500-row slice and 200 held-out rows."""
    tmp = tmp_path_factory.mktemp("real")
    teacher_rows, train, held = _slice(tmp / "t.csv", 0, 2500), _slice(tmp / "s.csv", 2500, 3000), \
        _slice(tmp / "h.csv", 3000, 3200)
    data = [f"--data.init_args.train={teacher_rows}", "--data.init_args.val=null", "--data.init_args.label_range=[0,5]"]
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", "--config", str(ROOT / "configs/teacher/quickstart.yaml"), *data, *QUIET,
                   "--trainer.max_epochs=1", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=true",
                   f"--trainer.default_root_dir={tmp}"])
    ckpt = str(tmp / "teacher.ckpt")
    cli.trainer.save_checkpoint(ckpt)
    caches = {}
    for name, path in (("train", train), ("held", held)):
        caches[name] = tmp / "cache" / name
        with mock.patch("sys.argv", ["distill"]):
            run(["cache", "--config", str(ROOT / "configs/cache/quickstart.yaml"), f"--data.init_args.train={path}",
                 "--data.init_args.label_range=[0,5]", "--ckpt_path", ckpt, "--out", str(caches[name])])
    return tmp, train, held, caches


def _agreement(module: DistillModule, held: str, cache_dir: Path) -> float:
    rows = read_pairs(held, label_range=(0, 5))[0]
    teacher = ScoreCache(cache_dir).scores()
    student = module.student
    u, v = student.encode(rows["text_a"]), student.encode(rows["text_b"])
    cosine = student.scores(u, v)["cosine"]
    return float(spearmanr(cosine.numpy(), [teacher[p] for p in rows["pair_id"]])[0])


@pytest.mark.slow
@pytest.mark.parametrize("lr", [5e-5, 0.0], ids=["learning", "lr0-control"])
def test_student_moves_toward_teacher_on_real_weights(real_setup, lr):
    """Distilling on 500 teacher-scored pairs raises student-teacher Spearman on 200 held-out pairs by >= 0.05;
    the same run with lr=0 must not (so the assertion is about learning, not about the data)."""
    tmp, train, held, caches = real_setup
    args = ["--config", str(ROOT / "configs/student/quickstart.yaml"), f"--data.init_args.train={train}",
            "--data.init_args.val=null", "--data.init_args.label_range=[0,5]",
            f"--data.init_args.cache_dir={caches['train']}", *QUIET, "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={tmp}",
            "--model.init_args.objectives.teacher_mse.init_args.weight=1",
            "--model.init_args.objectives.gold_mse.init_args.weight=0", f"--model.init_args.lr={lr}",
            "--trainer.precision=32-true"]
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", *args, "--trainer.max_epochs=0"])
        before = _agreement(cli.model, held, caches["held"])
        cli = run(["fit", *args, "--trainer.max_epochs=6"])
    after = _agreement(cli.model, held, caches["held"])
    if lr > 0:
        print(f"student-teacher Spearman on held-out pairs: {before:.4f} -> {after:.4f}")
        assert after - before >= 0.05, (before, after)
    else:
        assert abs(after - before) < 0.01, (before, after)


@pytest.mark.slow
def test_real_minilm_student_exports_for_production(tmp_path):
    """A short fit of the real MiniLM student (gold labels, 200 pairs, with its DSE head), then `distill export
    --onnx --int8`: sentence-transformers, ONNX fp32 and the DSE head loader agree with distill's student."""
    import json

    import torch
    from sentence_transformers import SentenceTransformer

    from distill import serving
    from distill.checkpoints import load_model
    from distill.export import PROBES
    from distill.export import main as export
    from distill.names import ONNX_FILE, STUDENT_CONFIG

    train = _slice(tmp_path / "s.csv", 0, 200)
    with mock.patch("sys.argv", ["distill"]):
        cli = run(["fit", "--config", str(ROOT / "configs/student/quickstart.yaml"), f"--data.init_args.train={train}",
                   "--data.init_args.val=stsb/dev", "--data.init_args.max_pairs=200", "--data.init_args.cache_dir=null",
                   "--data.init_args.label_range=[0,5]", "--model.init_args.objectives.teacher_mse.init_args.weight=0",
                   *QUIET, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}"])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    folder = export(ckpt, str(tmp_path / "export"), onnx=True, int8=True)
    _, student, _ = load_model(ckpt)
    reference = student.encode(PROBES)
    st = SentenceTransformer(str(folder), device="cpu").encode(PROBES, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(st, reference).min() >= 0.9999
    onnx = serving.OnnxServer(folder, json.loads((folder / STUDENT_CONFIG).read_text()), ONNX_FILE, None).encode(PROBES)
    assert (onnx - reference).abs().max() <= 1e-4
    checks = json.loads((folder / "export_report.json").read_text())["checks"]
    print(f"real MiniLM export checks: {checks}")
    assert abs(checks["int8_spearman_delta"]) <= 0.02  # on 500 STS-B dev pairs
