"""What the quickstart and the recipe scripts (`scripts/*_recipe.py`) share.

A recipe is a list of stages (fit a teacher, cache its scores, train arms, bench, ...) whose results go into one
`report.json`. `Recipe` times each stage into the report and writes it after each one (atomically), so a killed
run resumes where it stopped: a stage already in the report is skipped. It also holds the all-in time cap, the
machine description every report carries, and the verbs run in-process exactly as a user types them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from distill import names
from distill.machine import machine
from distill.outdir import write_text_atomic as write_atomic


class TimeCapReached(RuntimeError):
    """The recipe's all-in time cap ran out before a stage could start; what is done so far is in the report."""


def run_verb(argv: list[str]) -> Any:
    """`distill <argv>` in this process (Trainer verbs return the LightningCLI, tools their result)."""
    from distill.cli import run

    # LightningCLI warns when given args while sys.argv holds the recipe's own; the args are the whole command
    with mock.patch.object(sys, "argv", ["distill"]):
        return run(argv)


def best_checkpoint(folder: Path, pattern: str = "best-*.ckpt") -> str | None:
    """The newest checkpoint matching `pattern` below `folder` (a run's logs or checkpoints), if any."""
    found = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else None


def cache_complete(folder: Path) -> bool:
    """Whether a score cache folder holds a finished cache (its manifest says so)."""
    manifest = folder / names.MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("complete", False)


class Recipe:
    """A resumable report of timed stages under an all-in time cap.

    Args:
        out: the recipe's folder; the report is `out/report.json` (+ `report.md` when `render` is given).
        resume: continue the report found there (a stage it holds is not run again); False starts afresh.
        time_cap_s: the all-in cap in seconds, counted from construction; None for no cap.
        render: the report as markdown for people, written beside the JSON after each stage.
    """

    def __init__(self, out: Path, resume: bool = True, time_cap_s: float | None = None,
                 render: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.out, self.time_cap_s, self.render = Path(out), time_cap_s, render
        self.path = self.out / names.REPORT_JSON
        self.start = time.perf_counter()
        self.report: dict[str, Any] = json.loads(self.path.read_text()) if resume and self.path.is_file() else {}
        self.report.setdefault("stages", {})
        self.report["machine"] = machine()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def done(self, name: str) -> bool:
        return name in self.report["stages"]

    def stage(self, name: str, fn: Callable[[], Any], keep: bool = False, done: bool | None = None) -> Any:
        """Run `fn` unless the stage is done; time it and save the report after it.

        A stage is done when the report holds it, or, when `done` is given, when `done` says so (for a stage whose
        artefact, a checkpoint or a cache, is the truth: deleting it makes the stage run again). With `keep`,
        `fn`'s result (JSON-serialisable) is saved under `report["results"][name]` in the same write, and a skipped
        stage returns it: a kill between a stage and the use of its result loses nothing.
        """
        if self.done(name) if done is None else done:
            print(f"[{self.out.name}] {name}: done before, skipped", flush=True)
            return self.report.get("results", {}).get(name)
        if self.time_cap_s is not None and self.elapsed_s > self.time_cap_s:
            self.save()
            raise TimeCapReached(f"{self.out}: the time cap of {self.time_cap_s:.0f} s ran out before stage "
                                 f"{name!r}; run the same command again to continue from there")
        start = time.perf_counter()
        result = fn()
        if keep:
            self.report.setdefault("results", {})[name] = result
        self.report["stages"][name] = round(time.perf_counter() - start, 1)
        print(f"[{self.out.name}] {name}: {self.report['stages'][name]} s", flush=True)
        self.save()
        return result

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.report, indent=2))
        if self.render is not None:
            write_atomic(self.out / names.REPORT_MD, self.render(self.report))


QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
# The strong teacher (all-mpnet-base-v2 cross-encoder) and its STS-B train cache: overlays on the quickstart's
STRONG_TEACHER = ["--config", "configs/teacher/quickstart.yaml", "--config", "configs/teacher/strong.yaml"]
STRONG_CACHE = ["--config", "configs/cache/quickstart.yaml", "--config", "configs/cache/strong.yaml"]
STRONG_RUN = Path("runs/strong-teacher")  # where STRONG_TEACHER and STRONG_CACHE write, relative to the checkout


def strong_teacher(recipe: Recipe) -> str:
    """The strong teacher's best checkpoint and its complete STS-B train cache, built once for every recipe that
    needs them (run from the checkout: the configs name `runs/` relative to it)."""
    recipe.stage("teacher_fit", lambda: run_verb(["fit", *STRONG_TEACHER, *QUIET]),
                 done=best_checkpoint(STRONG_RUN / "logs") is not None)
    teacher = best_checkpoint(STRONG_RUN / "logs")
    recipe.stage("cache_train", lambda: run_verb(["cache", *STRONG_CACHE, "--ckpt_path", teacher]),
                 done=cache_complete(STRONG_RUN / "cache" / "train"))
    return teacher


def teacher_and_cache(recipe: Recipe, out: Path, smoke: bool) -> tuple[str, str]:
    """A recipe's cross-encoder checkpoint and its STS-B train cache: the strong teacher (built once, shared by every
    recipe), or in a smoke run a MiniLM teacher fitted on 64 pairs in `out` (its scores mean nothing; the cache
    still covers every STS-B train pair, so any subset of pivots or pairs finds its score)."""
    if not smoke:
        return strong_teacher(recipe), str(STRONG_RUN / "cache" / "train")
    folder, cache = out / "teacher", out / "teacher-cache"
    recipe.stage("teacher_fit", lambda: run_verb(
        ["fit", "--config", "configs/teacher/quickstart.yaml", *QUIET, f"--trainer.default_root_dir={folder}",
         f"--trainer.logger.init_args.save_dir={folder}", "--data.init_args.max_pairs=64", "--trainer.max_epochs=1"]),
        done=best_checkpoint(folder) is not None)
    ckpt = best_checkpoint(folder)
    recipe.stage("cache_train", lambda: run_verb(["cache", "--config", "configs/cache/quickstart.yaml",
                                                  "--ckpt_path", str(ckpt), "--out", str(cache)]),
                 done=cache_complete(cache))
    return str(ckpt), str(cache)


def recipe_arguments(doc: str, name: str, cap_min: float) -> argparse.ArgumentParser:
    """The arguments every `scripts/<name>_recipe.py` takes (`--out`, `--smoke`, `--time_cap_min`); a recipe adds
    its own to the parser it gets back."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=None, help=f"the recipe's folder (runs/{name}, smoke: runs/{name}-smoke)")
    parser.add_argument("--smoke", action="store_true", help="every stage on a few examples (CI); figures mean nothing")
    parser.add_argument("--time_cap_min", type=float, default=None,
                        help="stop before a stage once this many minutes have passed (rerun to continue); "
                             f"default {cap_min:g} (smoke: none)")
    return parser


def open_recipe(args: argparse.Namespace, root: Path, name: str, cap_min: float,
                render: Callable[[dict[str, Any]], str]) -> Recipe:
    """The recipe's resumable report, opened the same way by every recipe: offline, run from the repository root
    (configs name data and runs relative to it), in `--out` or runs/<name>[-smoke], under the all-in time cap."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(root)
    out = Path(args.out or (f"runs/{name}-smoke" if args.smoke else f"runs/{name}")).resolve()
    cap = args.time_cap_min if args.time_cap_min is not None else (None if args.smoke else cap_min)
    recipe = Recipe(out, render=render, time_cap_s=cap and cap * 60)
    recipe.report["command"] = f"python scripts/{name}_recipe.py " + " ".join(sys.argv[1:])
    recipe.report["smoke"] = args.smoke
    return recipe


def close_recipe(recipe: Recipe) -> None:
    """Totals into the report (all runs so far, and this one), saved."""
    stages = recipe.report["stages"]
    stages["total_s"] = round(sum(v for k, v in stages.items() if k not in ("total_s", "this_run_s")), 1)
    stages["this_run_s"] = round(recipe.elapsed_s, 1)
    recipe.save()
