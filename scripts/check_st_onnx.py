"""Load an exported student with sentence-transformers' own ONNX backend and compare it with its torch backend.

Needs no distill: run it in the environment you serve from. sentence-transformers' ONNX backend needs
`optimum-onnx`, which (as of 2026-11) pins transformers < 4.58 and so cannot share an environment with
sentence-transformers 6; a second environment proves the folder loads where it will be served:

    python3 -m venv /tmp/st-onnx && /tmp/st-onnx/bin/pip install torch==2.13.0 "sentence-transformers[onnx]<6"
    /tmp/st-onnx/bin/python scripts/check_st_onnx.py runs/quickstart/export/student

Prints, per ONNX file, the max abs difference of its embeddings from the torch backend's; exits 1 when fp32
differs by more than 1e-4.
"""

from __future__ import annotations

import sys

import sentence_transformers
from sentence_transformers import SentenceTransformer

TEXTS = ["A person strums a guitar on stage.", "Two dogs run through a field of tall grass while the sun sets.",
         "The central bank left interest rates unchanged on Thursday.", "ok",
         "Eine Person spielt auf der Bühne Gitarre."]


def main(folder: str) -> int:
    reference = SentenceTransformer(folder, device="cpu").encode(TEXTS)
    worst = 0.0
    for file, tolerance in (("onnx/model.onnx", 1e-4), ("onnx/model_qint8.onnx", None)):
        model = SentenceTransformer(folder, device="cpu", backend="onnx", model_kwargs={"file_name": file})
        diff = float(abs(model.encode(TEXTS) - reference).max())
        print(f"sentence-transformers {sentence_transformers.__version__} backend=onnx {file}: "
              f"max abs diff from torch {diff:.2e}" + ("" if tolerance else " (int8: reported, not checked)"))
        if tolerance:
            worst = max(worst, diff / tolerance)
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
