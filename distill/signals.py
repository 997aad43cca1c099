"""SIGTERM (preemption, `docker stop`, `timeout`): stop within a batch, save what resume needs, exit non-zero.

Lightning's own SIGTERM handler only sets `trainer.received_sigterm`; its fit loop then raises
`SIGTERMException`, a `SystemExit` with status 0, so a preempted `distill fit && distill export` would ship a
half-trained model, and its predict loop never looks at the flag at all. `StopOnSigterm` closes both gaps:

    trainer.callbacks.append(StopOnSigterm())   # any Trainer verb, e.g. `distill cache`'s Trainer.predict
    try:
        trainer.predict(...)
    except SIGTERMException as err:             # pytorch_lightning.utilities.exceptions
        raise Preempted(stopped_message("cache", trainer)) from err

`Preempted` exits with status 143 (128 + SIGTERM, what a shell reports for a process SIGTERM killed);
`distill.cli.main` prints its message as one line.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

EXIT_STATUS = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """A verb stopped by SIGTERM after saving what it could: exit status 143, `message` says what to run next."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_STATUS)
        self.message = message


class StopOnSigterm(pl.Callback):
    """Stops any Trainer verb at the next batch boundary after SIGTERM; when fitting, saves a resumable
    checkpoint as the checkpoint folder's `last.ckpt` first, so `--ckpt_path last` continues from that batch.

    Attributes:
        saved: the checkpoint written on SIGTERM, or None.
    """

    def __init__(self) -> None:
        self.saved: Path | None = None

    def _stop_if_signalled(self, trainer: pl.Trainer, *args: Any) -> None:
        # the fit loop checks the flag itself; evaluation checks it only between batches of fit's validation,
        # and prediction never does
        if trainer.received_sigterm:
            raise SIGTERMException

    on_predict_batch_end = on_test_batch_end = on_validation_batch_end = _stop_if_signalled

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        path = resume_path(trainer)
        # temp file + rename: a second signal (or SIGKILL after the grace period) never leaves a truncated
        # last.ckpt where the previous good one was
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        self.saved = path


def resume_path(trainer: pl.Trainer) -> Path:
    """Where `--ckpt_path last` looks: `last.ckpt` in the ModelCheckpoint folder (or the run's root without one)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        folder, name = Path(callback.dirpath), callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
    else:
        folder, name = Path(trainer.default_root_dir) / "checkpoints", "last.ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def stopped_message(verb: str, trainer: pl.Trainer | None, saved: Path | None = None) -> str:
    """One line: what SIGTERM interrupted, what was kept and how to continue."""
    step = f" at step {trainer.global_step}" if trainer is not None and verb == "fit" else ""
    if saved is not None:
        # `last` finds the file only in a ModelCheckpoint's folder; name the file itself otherwise
        found = trainer is not None and isinstance(trainer.checkpoint_callback, ModelCheckpoint)
        return (f"{verb} stopped by SIGTERM{step}; saved {saved}: rerun the same command with --ckpt_path "
                f"{'last' if found else saved} to resume")
    return f"{verb} stopped by SIGTERM{step} before finishing; nothing complete was written: rerun it"
