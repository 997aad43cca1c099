"""Weights & Biases tracking: the logger `configs/logger/wandb.yaml` selects, the resolved config as the run's
config, and helpers that log tables, images and artifacts to the active run (no-ops when W&B is off).

W&B stays optional at run time: nothing here imports `wandb` until a W&B logger or helper is used, and CSV
logging remains the default of every recipe.
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytorch_lightning as pl
import yaml
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

OFFLINE_MODES = ("offline", "disabled", "dryrun")


def check_wandb(offline: bool = False) -> None:
    """Fail in one line, before any work, when W&B is selected but cannot log.

    Raises:
        ValueError: wandb is not installed, or the run is online and no API key is configured.
    """
    try:
        import wandb  # noqa: F401
    except ImportError as err:
        raise ValueError(f"W&B logging is selected (configs/logger/wandb.yaml) but wandb is not importable ({err}); "
                         f"install it with `pip install wandb`, or drop the logger config") from None
    if offline or os.environ.get("WANDB_MODE", "").lower() in OFFLINE_MODES:
        return
    if not _has_api_key():
        raise ValueError("W&B logging is selected and online, but no W&B API key is configured: run `wandb login` "
                         "(or set WANDB_API_KEY), or set WANDB_MODE=offline and `wandb sync` the run later")


def _has_api_key() -> bool:
    # the places wandb itself reads a key from, checked without a network call (wandb.init would prompt or hang
    # on a machine without a terminal)
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's `WandbLogger`, checked at construction: wandb installed, and logged in unless offline.

    Constructed on every DDP rank, but only rank 0 creates a W&B run (Lightning's `rank_zero_experiment`).
    Takes Lightning's `WandbLogger` arguments (`project`, `name`, `save_dir`, `offline`, `log_model`, ...);
    the rest (`entity`, `group`, `tags`, `job_type`, ...) go to `wandb.init`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # forwards everything so the YAML surface is exactly Lightning's (jsonargparse reads the parent signature)
        check_wandb(offline=bool(kwargs.get("offline", False)))
        super().__init__(*args, **kwargs)


class LogConfig(pl.Callback):
    """Log the full resolved config (what `--print_config` shows) as the W&B run's config.

    Lightning only logs the model's and datamodule's hyperparameters; the trainer, callbacks and seed are in the
    config that LightningCLI's `SaveConfigCallback` holds, so this reads it from there at setup (rank 0 only).
    Keys are flattened to dots, the same names a sweep's parameters use.
    """

    @rank_zero_only
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, _LightningWandbLogger)]
        if saver is None or not loggers:
            return
        config = yaml.safe_load(saver.parser.dump(saver.config, skip_none=False))
        flat = flatten(config)
        for logger in loggers:
            logger.experiment.config.update(flat, allow_val_change=True)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def batch_size(batch: dict[str, Any]) -> int:
    """Pairs (or groups) in a batch: `ThroughputMonitor(batch_size_fn=distill.tracking.batch_size)`."""
    return len(batch["pair_id"])


def active_run() -> Any:
    """The current W&B run, or None when W&B is not installed or no run is active in this process."""
    try:
        import wandb
    except ImportError:
        return None
    return wandb.run


def log_table(name: str, rows: Sequence[dict[str, Any]], run: Any = None) -> bool:
    """Log rows (dicts; a key missing from a row is an empty cell) as a W&B table named `name`; returns whether
    anything was logged."""
    run = run or active_run()
    if run is None or not rows:
        return False
    import wandb

    columns = list(dict.fromkeys(key for row in rows for key in row))  # rows may differ (e.g. skipped backends)
    run.log({name: wandb.Table(columns=columns, data=[[_cell(row.get(c)) for c in columns] for row in rows])})
    return True


def _cell(value: Any) -> Any:
    # W&B tables type each column from its cells; per-repeat sample lists and nested dicts become JSON text
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def log_image(name: str, path: str | Path, run: Any = None) -> bool:
    """Log an image file (e.g. bench's `pareto.png`) as `name`; returns whether anything was logged."""
    run = run or active_run()
    if run is None:
        return False
    import wandb

    run.log({name: wandb.Image(str(path))})
    return True


def log_artifact(folder: str | Path, name: str, type: str = "model", run: Any = None,  # noqa: A002 - W&B's name
                 aliases: Sequence[str] = ("latest",)) -> bool:
    """Upload a folder (e.g. an export) as a W&B artifact; returns whether anything was logged."""
    run = run or active_run()
    if run is None:
        return False
    import wandb

    artifact = wandb.Artifact(name, type=type)
    artifact.add_dir(str(folder))
    run.log_artifact(artifact, aliases=list(aliases))
    return True


def resume_run(run_path: str, project: str | None = None) -> Any:
    """Resume a W&B run by path (`entity/project/run_id`) or id, to log to it from another command (e.g. bench or
    export after a sweep); returns the run, or None when wandb is missing or W&B is disabled."""
    try:
        import wandb
    except ImportError:
        return None
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return None
    parts = run_path.strip("/").split("/")
    entity, project = (parts[0], parts[1]) if len(parts) == 3 else (None, parts[0] if len(parts) == 2 else project)
    check_wandb()
    return wandb.init(id=parts[-1], project=project, entity=entity, resume="allow")


@contextlib.contextmanager
def logging_to(run_path: str | None) -> Iterator[Any]:
    """The run that `bench` / `export` log to: `run_path` (`entity/project/run_id`) resumed and finished on exit,
    or, without one, the run already active in this process (None when there is none: the helpers do nothing).

    Example:
        with tracking.logging_to(wandb_run) as run:
            tracking.log_table("bench/pairs", rows, run=run)
    """
    if not run_path:
        yield active_run()
        return
    run = resume_run(run_path)
    try:
        yield run
    finally:
        if run is not None:
            run.finish()


def best_checkpoint(source: str, root: str | Path = "runs") -> Path:
    """The selected (`best-*.ckpt`) checkpoint of a run, for `distill export` / `distill bench`.

    Args:
        source: a checkpoint file; a W&B run id or path `entity/project/<run_id>` (looked up under `root`, where
            Lightning's W&B logger writes `<project>/<run_id>/checkpoints/`); or a sweep path
            `entity/project/sweeps/<sweep_id>`, whose best run (by the sweep's metric) is taken (needs the server).
        root: the folder the runs wrote to (`trainer.logger.init_args.save_dir`).

    Raises:
        FileNotFoundError: no checkpoint of that run exists locally and none was logged as a W&B model artifact.
    """
    if Path(source).is_file():
        return Path(source)
    if source.endswith(".ckpt") or os.sep in source and Path(source).parent.is_dir():
        raise FileNotFoundError(f"checkpoint {source} does not exist; pass a .ckpt that `distill fit` wrote, or a "
                                f"W&B run id")
    parts = source.strip("/").split("/")
    if len(parts) == 4 and parts[2] == "sweeps":
        import wandb

        best = wandb.Api().sweep(source).best_run()
        if best is None:
            raise FileNotFoundError(f"sweep {source} has no finished run yet; wait for its agents, or pass a run id")
        parts = [parts[0], parts[1], best.id]
    run_id = parts[-1]
    found = sorted(Path(root).glob(f"**/{run_id}/checkpoints/best*.ckpt"))
    if found:
        return found[-1]
    if len(parts) == 3 and os.environ.get("WANDB_MODE", "").lower() not in OFFLINE_MODES:
        import wandb

        # Lightning's WandbLogger(log_model=True) uploads checkpoints as `model-<run_id>` with alias "best"
        artifact = wandb.Api().artifact(f"{parts[0]}/{parts[1]}/model-{run_id}:best", type="model")
        return Path(artifact.download()) / "model.ckpt"
    raise FileNotFoundError(f"no best*.ckpt of run {run_id} under {root}/; pass the folder the run logged to, or "
                            f"set trainer.logger.init_args.log_model=true so the checkpoint is uploaded to W&B")


def read_run(run_dir: str | Path, wait: float = 60.0) -> dict[str, Any]:
    """The config, final summary and logged artifact names of a W&B run folder, read from its `run-<id>.wandb`
    record log, so offline runs (which write no `wandb-summary.json`) can be checked without a server:
    {"config": {...}, "summary": {...}, "artifacts": [...], "finished": bool}.

    W&B's service process writes the log after the training process has exited, so this waits up to `wait`
    seconds for the run's exit record (a crashed run has none: then what was written so far).
    """
    from wandb.proto import wandb_internal_pb2

    (log,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + wait
    while True:
        kinds, config, summary, artifacts = set(), {}, {}, []
        for data in _records(log.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            kinds.add(kind)
            if kind == "artifact":
                artifacts.append(record.artifact.name)
            items = record.config.update if kind == "config" else record.summary.update if kind == "summary" else ()
            target = config if kind == "config" else summary
            for item in items:
                # one-part names come as `key` or a one-element `nested_key`; media (tables, images) as nested fields
                *parents, last = [item.key] if item.key else list(item.nested_key)
                node = target
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = json.loads(item.value_json)
        if "exit" in kinds or time.monotonic() > deadline:
            return {"config": config, "summary": summary, "artifacts": artifacts, "finished": "exit" in kinds}
        time.sleep(0.5)


def _records(buf: bytes) -> list[bytes]:
    # W&B's record log is LevelDB's log format after a 7-byte header (":W&B", magic, version): 32 KiB blocks of
    # chunks (crc32c: 4, length: 2, type: 1 = full, 2 = first, 3 = middle, 4 = last); wandb 0.2x dropped its Python
    # reader along with the Python backend
    block, header = 32768, 7
    if buf[:4] != b":W&B":
        raise ValueError("not a W&B run log (no :W&B header); pass the run folder (wandb/offline-run-*)")
    records, pending, offset = [], b"", header
    while offset + header <= len(buf):
        left = block - offset % block
        if left < header:  # block trailer: padding
            offset += left
            continue
        _, length, kind = struct.unpack("<IHB", buf[offset:offset + header])
        chunk = buf[offset + header:offset + header + length]
        offset += header + length
        if kind == 0:  # zeroed tail of a log still being written
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records
