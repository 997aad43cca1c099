"""Command lines of the shipped configs pointed at the tiny test backbone and pair files."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def teacher_args(tiny: str, pairs: dict[str, str], out: Path) -> list[str]:
    return ["--config", str(ROOT / "configs/teacher/quickstart.yaml"), f"--model.init_args.backbone={tiny}",
            f"--data.init_args.train={pairs['train']}", f"--data.init_args.val={pairs['dev']}",
            f"--data.init_args.test={pairs['test']}", "--data.init_args.label_range=[0, 5]",
            f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", *QUIET]


def student_args(tiny: str, pairs: dict[str, str], out: Path, cache_dir: Path | None) -> list[str]:
    args = ["--config", str(ROOT / "configs/student/quickstart.yaml"),
            f"--model.init_args.student.init_args.backbone={tiny}",
            f"--data.init_args.train={pairs['train']}", f"--data.init_args.val={pairs['dev']}",
            f"--data.init_args.test={pairs['test']}", "--data.init_args.label_range=[0, 5]",
            f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", *QUIET]
    return [*args, f"--data.init_args.cache_dir={cache_dir or 'null'}"]


def cache_args(tiny: str, pairs: dict[str, str], ckpt: str, out: Path) -> list[str]:
    return ["cache", "--config", str(ROOT / "configs/cache/quickstart.yaml"), f"--teacher.init_args.backbone={tiny}",
            f"--data.init_args.train={pairs['train']}", "--data.init_args.label_range=[0, 5]",
            "--ckpt_path", ckpt, "--out", str(out), "--shard_size", "32", "--accelerator", "cpu"]
