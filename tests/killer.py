"""A callback for fault tests: SIGKILL this process at the start of a given step (after its checkpoint)."""

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """Kill -9 when `global_step` reaches `step`, i.e. right after the checkpoint written at that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
