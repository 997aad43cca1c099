"""`distill sweep`: check and dry-run a W&B sweep file without a server.

A sweep file (`configs/sweeps/*.yaml`) is plain W&B sweep config: its `command` runs `distill fit --config
<recipe> --config configs/logger/wandb.yaml ${args}` and its parameters are the CLI's dotted keys. For real
sweeps, `wandb sweep` and `wandb agent` drive it (docs/sweeps.md). `--dry_run` samples parameter sets with
W&B's own sampler (the `sweeps` package the server runs), expands the command exactly as `wandb agent` does,
checks every parameter name against the recipe's resolved config, runs each command for 2 optimiser steps
with W&B offline, and checks that the sweep's metric was logged and that each run made exactly one W&B run.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from distill.tracking import flatten, read_run

# a 2-step run that still validates (so the sweep's metric is logged) and keeps its logger: fast_dev_run would
# switch loggers off (issue 7)
TWO_STEPS = ["--trainer.max_steps=2", "--trainer.limit_val_batches=2", "--trainer.num_sanity_val_steps=0",
             "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=1",
             "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
BACKBONE_KEY = "model.init_args.student.init_args.backbone"


class SweepError(ValueError):
    """A sweep file that cannot run as written (a ValueError: `distill` prints it as one line)."""


def main(
    method: str,
    parameters: dict[str, Any],
    command: list[str],
    metric: dict[str, Any] | None = None,
    early_terminate: dict[str, Any] | None = None,
    program: str | None = None,
    name: str | None = None,
    description: str | None = None,
    project: str | None = None,
    entity: str | None = None,
    run_cap: int | None = None,
    dry_run: bool = False,
    count: int = 2,
    ddp: int = 0,
    backbone: str | None = None,
    args: list[str] | None = None,
    out: str | None = None,
    seed: int = 0,
    timeout: int = 600,
) -> list[dict[str, Any]]:
    """Check a W&B sweep file (`--config configs/sweeps/X.yaml`) and dry-run it without a server.

    The sweep file is this command's config: `method` ... `run_cap` are W&B's sweep keys. Without `--dry_run`
    the file is validated, K parameter sets are sampled and the agent's command lines are printed.

    Args:
        method: W&B search method: grid, random or bayes.
        parameters: dotted CLI key -> W&B parameter spec (`values`, `distribution` with `min`/`max`, ...).
        command: the command `wandb agent` runs, with W&B's macros (`${env}`, `${program}`, `${args}`, ...).
        metric: `{name: val/spearman, goal: maximize}`: a key the fit logs every validation.
        early_terminate: e.g. `{type: hyperband, min_iter: 2, eta: 2}`.
        program: what `${program}` expands to.
        name: the sweep's name on the W&B server.
        description: the sweep's description.
        project: the W&B project (`wandb sweep` creates the sweep there).
        entity: the W&B entity.
        run_cap: the most runs the server starts.
        dry_run: run each sampled command for 2 steps with W&B offline, on `backbone` with `args` added.
        count: how many parameter sets to sample.
        ddp: the last `ddp` dry runs use 2 CPU processes (`--trainer.devices=2 --trainer.strategy=ddp`).
        backbone: a local backbone folder for the student (`model.init_args.student.init_args.backbone`),
            e.g. a tiny test model.
        args: more arguments appended to every dry-run command (e.g. data files, `--trainer.precision=32-true`).
        out: folder for the dry runs' outputs (default: a new temporary folder).
        seed: seed of the sampler (random and bayes).
        timeout: seconds one dry run may take before it is stopped and reported (a hang under DDP).

    Returns:
        One dict per sampled run: `params`, `command` (the agent's), and for dry runs `metric` (its last
        logged value), `run_dir` (the offline W&B run) and `ddp`.
    """
    sweep = {key: value for key, value in {
        "method": method, "parameters": parameters, "command": command, "metric": metric,
        "early_terminate": early_terminate, "program": program, "name": name, "description": description,
        "project": project, "entity": entity, "run_cap": run_cap}.items() if value is not None}
    samples = sample(sweep, count, seed)
    fit_args = fit_argv(command)
    check_parameters(fit_args, list(parameters), extra=_extra(backbone, args))
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="distill-sweep-"))
    dry = {"root": root, "metric": metric, "backbone": backbone, "args": args or [], "ddp": ddp,
           "timeout": timeout} if dry_run else None
    return [_one_sample(sweep, params, i, len(samples), dry) for i, params in enumerate(samples)]


def _one_sample(sweep: dict[str, Any], params: dict[str, Any], i: int, count: int,
                dry: dict[str, Any] | None) -> dict[str, Any]:
    """The agent's command for one parameter set, and its 2-step dry run when asked for."""
    agent_command = agent_command_line(sweep, params)
    result: dict[str, Any] = {"params": params, "command": agent_command}
    print(f"[{i + 1}/{count}] {shlex.join(agent_command)}", flush=True)
    if dry is not None:
        metric = dry["metric"]
        result.update(dry_run_one(agent_command, dry["root"] / f"run-{i}", metric, dry["backbone"], dry["args"],
                                  use_ddp=i >= count - dry["ddp"], timeout=dry["timeout"]))
        print(f"    ok: {metric['name'] if metric else 'no metric'} = {result['metric']} "
              f"({'2-process DDP, ' if result['ddp'] else ''}W&B run {result['run_dir']})", flush=True)
    return result


def sample(sweep: dict[str, Any], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` parameter sets drawn by W&B's own sampler (`sweeps.next_runs`), as {dotted key: value}."""
    import numpy as np

    with warnings.catch_warnings():
        # sweeps 0.3 declares a pydantic-v1 config key; pydantic 2 warns once at import (harmless, issue 7)
        warnings.simplefilter("ignore", UserWarning)
        try:
            from sweeps import next_runs, schema_violations_from_proposed_config
        except ImportError:
            raise SweepError("`distill sweep` needs W&B's sampler: pip install --no-deps 'sweeps>=0.3' and its deps "
                             "(pip install 'distill[sweeps]')") from None
    problems = schema_violations_from_proposed_config(sweep)
    if problems:
        raise SweepError(f"not a valid W&B sweep config: {'; '.join(problems)}")
    if "${args}" not in sweep["command"] and not any(str(c).startswith("${args") for c in sweep["command"]):
        raise SweepError("the sweep's command has no ${args}: the sampled parameters would never reach the fit; "
                         "end the command with ${args}")
    state = np.random.get_state()
    np.random.seed(seed)  # random and bayes draw from numpy's global generator
    try:
        runs = next_runs(sweep, [], validate=True, n=count)
    finally:
        np.random.set_state(state)
    return [{key: spec["value"] for key, spec in run.config.items()} for run in runs if run is not None]


def agent_command_line(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command `wandb agent` would run for these parameters: W&B's own macro expansion (wandb_agent.py)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    variables: dict[str, Any] = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    # what the agent sets besides the argument formats
    variables.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep.get("program", "")])
    out: list[str] = []
    for chunk in create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in variables or chunk == "${args_json_file}":
                raise SweepError(f"the sweep's command uses {chunk}, which the dry run cannot expand; use ${{env}}, "
                                 f"${{program}}, ${{args}} or ${{args_no_hyphens}}")
            out += [str(v) for v in variables[chunk[2:-1]]]
        else:
            out.append(chunk)
    return out


def fit_argv(command: list[str]) -> list[str]:
    """The `distill` arguments of a sweep command (`fit --config ...`), without macros."""
    words = [str(c) for c in command]
    start = next((i + 1 for i, w in enumerate(words) if Path(w).name == "distill"), None)
    if start is None or start >= len(words) or words[start] != "fit":
        raise SweepError(f"the sweep's command {' '.join(words)!r} does not run `distill fit`; write it as [${{env}}, "
                         f"distill, fit, --config, <recipe>, --config, configs/logger/wandb.yaml, ${{args}}]")
    return [w for w in words[start:] if not w.startswith("${")]


def _extra(backbone: str | None, args: list[str] | None) -> list[str]:
    return ([f"--{BACKBONE_KEY}={backbone}"] if backbone else []) + list(args or [])


def resolved_config(fit_args: list[str]) -> dict[str, Any]:
    """The config `distill fit` resolves from these arguments (`--print_config`), without building anything."""
    from distill.cli import run

    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run([*fit_args, "--print_config"])
        except SystemExit as done:
            if done.code not in (0, None):
                lines = [line for line in errors.getvalue().splitlines() if line.strip()]
                raise SweepError(f"the sweep's command does not parse: {lines[-1] if lines else done}") from None
    return yaml.safe_load(printed.getvalue())


def check_parameters(fit_args: list[str], names: list[str], extra: list[str] = ()) -> None:
    """Every sweep parameter must be a dotted key of the recipe's resolved config, or the fit would reject it
    (or, for a key under a dict, silently add an unused entry)."""
    keys = flatten(resolved_config([*fit_args, *extra]))
    unknown = [n for n in names if n not in keys and not any(k.startswith(n + ".") for k in keys)]
    if unknown:
        hints = [_closest(n, keys) for n in unknown]
        raise SweepError(f"sweep parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(n) for n in unknown)} {'are' if len(unknown) > 1 else 'is'} not a key of "
                         f"`distill {' '.join(fit_args)}`"
                         f"{' (did you mean ' + ', '.join(h for h in hints if h) + '?)' if any(hints) else ''}; "
                         f"use the dotted keys `distill {' '.join(fit_args)} --print_config` shows")


def _closest(name: str, keys: dict[str, Any]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(keys), n=1, cutoff=0.6)
    return match[0] if match else ""


def dry_run_one(agent_command: list[str], folder: Path, metric: dict[str, Any] | None, backbone: str | None,
                args: list[str], use_ddp: bool = False, timeout: int = 600) -> dict[str, Any]:
    """Run one agent command for 2 steps with W&B offline; check the metric and that one W&B run was made."""
    folder.mkdir(parents=True, exist_ok=True)
    command = _executable(agent_command) + _extra(backbone, args) + TWO_STEPS + (DDP if use_ddp else []) + [
        f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}
    # a dry run must never join a real sweep or resume a real run
    for key in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME"):
        env.pop(key, None)
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SweepError(f"the dry run `{shlex.join(command)}` did not finish in {timeout} s"
                         f"{' (a DDP hang: a rank waiting on a collective call)' if use_ddp else ''}; "
                         f"its output is in {folder}") from None
    (folder / "output.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise SweepError(f"the dry run failed ({lines[-1] if lines else f'exit code {proc.returncode}'}); "
                         f"command: {shlex.join(command)}; full output: {folder / 'output.txt'}")
    runs = run_dirs(folder)
    if len(runs) != 1:
        why = " (every DDP rank made one)" if use_ddp else ""
        raise SweepError(f"the dry run made {len(runs)} W&B runs, expected 1{why}: "
                         f"{', '.join(str(r) for r in runs) or 'none'}; log with distill.tracking.WandbLogger "
                         f"(add --config configs/logger/wandb.yaml to the sweep's command)")
    summary = read_run(runs[0])["summary"]
    value = check_metric(summary, metric) if metric else None
    return {"metric": value, "run_dir": str(runs[0]), "ddp": use_ddp, "summary": summary}


def check_metric(summary: dict[str, Any], metric: dict[str, Any]) -> Any:
    """The last value of the sweep's metric in a run's summary; a metric the fit never logged is an error (the
    server's Bayesian search and hyperband would see nothing)."""
    if metric["name"] not in summary:
        logged = sorted(k for k in summary if not k.startswith("_") and "/" in k)
        raise SweepError(f"the sweep's metric {metric['name']!r} was never logged by the fit (it logged: "
                         f"{', '.join(logged) or 'nothing'}); set metric.name in the sweep file to one of those")
    return summary[metric["name"]]


def _executable(command: list[str]) -> list[str]:
    # run the agent's command as written; where `distill` is not on PATH (tests from an unactivated venv), the
    # same entry point through this interpreter
    words = list(command)
    if words and words[0] == "/usr/bin/env":
        words = words[1:]
    if words and words[0] == "distill" and shutil.which("distill") is None:
        words = [sys.executable, "-m", "distill", *words[1:]]
    return words


def run_dirs(save_dir: str | Path) -> list[Path]:
    """The W&B run folders under a logger's save_dir (`wandb/run-*` online, `wandb/offline-run-*` offline)."""
    base = Path(save_dir) / "wandb"
    return sorted(p for p in base.glob("*run-*") if p.is_dir() and not p.is_symlink())
