"""`distill.serving` (the one-query path) against the student's own torch fp32 encode; the floor arithmetic."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import WORDS, sentence

from distill import names, serving
from distill.bench.floor import floor_ms, forward_flops, gemm_flops, gemm_gflops
from distill.bench.report import with_floors

# an equal embedding within each backend's arithmetic: cosine to the torch fp32 reference
TOLERANCE = {"torch-fp32": 1e-6, "torch-bf16": 2e-2, "onnx-fp32": 1e-5, "onnx-int8": 5e-2}


@pytest.fixture(scope="module")
def folder(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported student (mean pooling, normalised, a prefix) with ONNX fp32 and int8 graphs."""
    from distill import onnx_backend
    from students import BiEncoder

    out = tmp_path_factory.mktemp("served")
    student = BiEncoder(backbone=tiny_backbone, prefix="query: ", max_seq_length=16).eval()
    student.save_pretrained(out)
    onnx_backend.export_onnx(student.encoder, student.tokenizer, out / names.ONNX_FILE, "last_hidden_state")
    onnx_backend.quantize_int8(out / names.ONNX_FILE, out / names.INT8_FILE)
    return out


@pytest.fixture(autouse=True)
def _torch_threads():
    """serving.load(threads=N) sets torch's process-wide pool: restore it, or later tests train on fewer cores."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(3)
    return [sentence(rng) for _ in range(12)] + [" ".join(WORDS[:30])]  # the last one is truncated at 16 tokens


@pytest.mark.parametrize("backend", serving.BACKENDS)
def test_every_backend_serves_what_the_student_encodes(folder, texts, backend):
    from students import BiEncoder

    if serving.skip_reason(backend):
        pytest.skip(serving.skip_reason(backend))
    reference = BiEncoder.from_pretrained(folder).encode(texts)
    server = serving.load(folder, backend)  # threads=None: torch's one global pool stays as the suite set it
    one = torch.stack([server.query(t) for t in texts])  # unpadded, no mask
    batch = server.encode(texts, batch_size=5)  # padded batches, longest first
    for got in (one, batch):
        cos = torch.nn.functional.cosine_similarity(got, reference)
        assert (1 - cos).max() <= TOLERANCE[backend], (backend, (1 - cos).max())
    assert server.ids(texts[-1])[:1] == [2] and len(server.ids(texts[-1])) == 16  # [CLS] ... truncated


def test_the_index_returns_the_best_candidates_in_order():
    index = serving.Index(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]))
    scores, idx = index.search(torch.tensor([0.8, 0.6]), k=3)
    assert idx.tolist() == [2, 0, 1] and scores.tolist() == pytest.approx([0.96, 0.8, 0.6])


def test_a_folder_without_the_backends_files_is_named(folder, tmp_path):
    (tmp_path / names.STUDENT_CONFIG).write_text((folder / names.STUDENT_CONFIG).read_text())
    (tmp_path / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    with pytest.raises(serving.ServingError, match=r"has no onnx/model_qint8.onnx, which onnx-int8 needs.*--int8"):
        serving.load(tmp_path, "onnx-int8")
    with pytest.raises(serving.ServingError, match=r"has no model.safetensors, which torch-fp32 needs"):
        serving.load(tmp_path, "torch-fp32")
    with pytest.raises(serving.ServingError, match=r"backend 'tpu-int4': expected one of"):
        serving.load(folder, "tpu-int4")


def test_bf16_without_native_support_is_refused_with_the_reason(folder, monkeypatch):
    monkeypatch.setattr(serving, "bf16_reason", lambda: "this CPU lacks native bf16")
    with pytest.raises(serving.ServingError, match="torch-bf16 cannot run here: this CPU lacks native bf16"):
        serving.load(folder, "torch-bf16")


def test_the_floor_arithmetic_on_known_sizes():
    assert gemm_flops(1000) == 2e9
    # MiniLM-L6 (384 wide, 1536 feed-forward, 6 layers), 12 tokens: 2*6*(4*12*384^2 + 2*12*384*1536 + 2*144*384)
    minilm = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
    assert forward_flops(minilm, 12) == 2 * 6 * (4 * 12 * 384 ** 2 + 2 * 12 * 384 * 1536 + 2 * 144 * 384)
    assert forward_flops(minilm, 12) == pytest.approx(256e6, rel=0.01)  # the 256 MFLOP
    assert floor_ms(2e9, 100.0) == pytest.approx(20.0)  # 2 GFLOP at 100 GFLOP/s
    rows = with_floors([{"backend": "torch-fp32", "query_gflop": 0.256, "p50_ms": 2.0},
                        {"backend": "onnx-int8", "query_gflop": 0.256, "p50_ms": 2.0},
                        {"backend": "torch-fp32", "p50_ms": 2.0}], {"torch-fp32": 256.0})
    assert rows[0]["floor_ms"] == pytest.approx(1.0) and rows[0]["latency_over_floor"] == pytest.approx(2.0)
    assert "floor_ms" not in rows[1] and "floor_ms" not in rows[2]  # no rate for the backend; no work counted


def test_a_gemm_rate_is_measured_for_each_backend():
    for backend in ("torch-fp32", "onnx-fp32", "onnx-int8"):
        rate = gemm_gflops(backend, n=128, repeats=2, threads=1)
        assert 0.1 < rate < 1e5, (backend, rate)


def test_a_static_student_and_a_matryoshka_point_serve_what_they_encode(tiny_backbone, texts, tmp_path):
    from students import BiEncoder, StaticStudent

    static = StaticStudent(source=tiny_backbone, dim=16, token_vectors="input")
    static.save_pretrained(tmp_path / "static")
    server = serving.load(tmp_path / "static", "torch-fp32", threads=torch.get_num_threads())
    expected = static.encode(texts)
    assert torch.allclose(server.encode(texts), expected, atol=1e-5)
    assert torch.allclose(server.query(texts[3]), expected[3], atol=1e-5)
    assert server.encode(["[UNK]"]).shape == (1, 16)
    with pytest.raises(serving.ServingError, match="static student .* torch-fp32 only"):
        serving.load(tmp_path / "static", "onnx-int8")
    cut = BiEncoder(backbone=tiny_backbone, dims=12)
    cut.save_pretrained(tmp_path / "cut")
    server = serving.load(tmp_path / "cut", "torch-fp32", threads=torch.get_num_threads())
    assert server.encode(texts).shape == (len(texts), 12)
    assert torch.allclose(server.encode(texts), cut.encode(texts), atol=1e-5)
    assert torch.allclose(server.query(texts[0]), cut.encode(texts[:1])[0], atol=1e-5)
