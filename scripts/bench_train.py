"""Training throughput: distill vs sentence-transformers' trainer, same backbone, batch, length, loss, precision.

Both train all-MiniLM-L6-v2 with MultipleNegativesRankingLoss (distill: `distill.losses.InfoNCE`, scale 20,
cosine; sentence-transformers: `MultipleNegativesRankingLoss`) on STS-B train pairs (text_a -> text_b), AdamW
at the same learning rate, in one process on the same threads. Repeats are interleaved (and the order
alternates), the first `warmup` steps of every run are not timed, and the figure is pairs per second over the
timed steps. Prints a table and writes JSON.

    nice -n 19 python scripts/bench_train.py --repeats 3 --steps 30 --out runs/bench_train/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


class StepClock:
    """Wall-clock time of each optimiser step's end (shared by the Lightning and the transformers callbacks)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def rate(self, warmup: int, batch: int) -> float:
        timed = self.times[warmup:]
        return (len(timed) - 1) * batch / (timed[-1] - timed[0])


def run_distill(args: argparse.Namespace, group_by_length: bool) -> float:
    import pytorch_lightning as pl

    from distill.data import PairDataModule
    from distill.losses import InfoNCE
    from distill.module import DistillModule
    from students import BiEncoder

    clock = StepClock()

    class Clock(pl.Callback):
        def on_train_batch_end(self, *_: Any) -> None:
            clock.tick()

    pl.seed_everything(0, verbose=False)
    student = BiEncoder(backbone="minilm-l6", pooling="mean", normalize=True, max_seq_length=args.max_seq_length)
    model = DistillModule(student, {"mnrl": InfoNCE(scale=20.0)}, lr=args.lr, warmup_ratio=0.0)
    data = PairDataModule(train="stsb/train", batch_size=args.batch_size, group_by_length=group_by_length,
                          max_pairs=args.batch_size * (args.steps + 1))
    trainer = pl.Trainer(max_steps=args.steps, precision=args.precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[Clock()], accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=data)
    return clock.rate(args.warmup, args.batch_size)


def run_sentence_transformers(args: argparse.Namespace, pairs: dict[str, list[str]]) -> float:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from distill.backbones import resolve

    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.tick()

    torch.manual_seed(0)
    model = SentenceTransformer(resolve("minilm-l6"), device="cpu")
    model.max_seq_length = args.max_seq_length
    n = args.batch_size * (args.steps + 1)
    dataset = Dataset.from_dict({"anchor": pairs["text_a"][:n], "positive": pairs["text_b"][:n]})
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(ROOT / "runs/bench_train/st"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=0, bf16=args.precision == "bf16-mixed", use_cpu=True,
        report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True, seed=0,
        dataloader_drop_last=True)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[Clock()])
    trainer.train()
    return clock.rate(args.warmup, args.batch_size)


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": [round(v, 2) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    parser.add_argument("--out", default=str(ROOT / "runs/bench_train/report.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    from distill.data import read_pairs

    rows, _ = read_pairs("stsb/train")
    pairs = {"text_a": list(rows["text_a"]), "text_b": list(rows["text_b"])}
    systems = {
        "distill": lambda: run_distill(args, group_by_length=True),
        "distill (no length grouping)": lambda: run_distill(args, group_by_length=False),
        "sentence-transformers": lambda: run_sentence_transformers(args, pairs),
    }
    results: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:  # interleaved, order alternating
            results[name].append(systems[name]())
            print(f"repeat {r}: {name}: {results[name][-1]:.1f} pairs/s", flush=True)
    st = results["sentence-transformers"]
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}, torch {torch.__version__}",
        "setup": {"backbone": "all-MiniLM-L6-v2", "loss": "MultipleNegativesRankingLoss (scale 20, cosine)",
                  "data": "STS-B train pairs", **{k: v for k, v in vars(args).items() if k != "out"}},
        "pairs_per_s": {name: summary(v) for name, v in results.items()},
        "ratio_vs_sentence_transformers": {
            name: {"of_medians": round(statistics.median(v) / statistics.median(st), 3),
                   "per_repeat": [round(a / b, 3) for a, b in zip(v, st)]}
            for name, v in results.items() if name != "sentence-transformers"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("\n| system | pairs/s median | min-max | ratio vs sentence-transformers |\n|---|---|---|---|")
    for name, s in report["pairs_per_s"].items():
        ratio = report["ratio_vs_sentence_transformers"].get(name, {}).get("of_medians", 1.0)
        print(f"| {name} | {s['median']} | {s['min']}-{s['max']} | {ratio}x |")
    print(f"\n{args.repeats} interleaved repeats of {args.steps} steps ({args.warmup} untimed), "
          f"batch {args.batch_size}, max_seq_length {args.max_seq_length}, {args.precision}; "
          f"{report['machine']}. JSON: {out}")


if __name__ == "__main__":
    main()
