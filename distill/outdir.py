"""Output folders a verb writes (`export`, `trim`, `cache`): `--overwrite` replaces only what that verb wrote.

A verb builds its folder beside the target as `.<name>.partial-<pid>` and renames it into place, so a kill never
leaves a half-written `--out`. `--overwrite` replaces a folder only when it is empty or carries the verb's marker
file (its report or manifest, written last), never the current folder, a folder above it, or one that holds a
path the verb still needs (the checkpoint being exported). Leaf module: stdlib only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class OutDirError(ValueError):
    """An `--out` the verb must not write or replace; the message names the folder and the fix."""


def check_out(target: Path, marker: str, verb: str, overwrite: bool, keep: list[Path] | None = None) -> None:
    """Refuse an `--out` that exists (without `--overwrite`), or that `--overwrite` must not replace.

    Args:
        target: the `--out` folder.
        marker: the file this verb writes last into every folder it makes (e.g. `export_report.json`).
        verb: the verb's name, for the message.
        overwrite: whether the user asked to replace an existing folder.
        keep: paths the verb reads while writing (a checkpoint): a target holding one of them is refused.
    """
    if not target.exists():
        return
    if not overwrite:
        raise OutDirError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
    resolved = target.resolve()
    if not target.is_dir():
        raise OutDirError(f"{target} is a file, not a folder {verb} wrote; choose another --out")
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutDirError(f"--out {target} is the current folder or above it; {verb} --overwrite replaces only a "
                          f"folder it wrote: choose another --out")
    for path in keep or []:
        if resolved == Path(path).resolve() or resolved in Path(path).resolve().parents:
            raise OutDirError(f"--out {target} holds {path}, which {verb} reads; choose another --out")
    if any(target.iterdir()) and not (target / marker).is_file():
        raise OutDirError(f"{target} is not empty and is not a folder {verb} wrote (no {marker}); --overwrite replaces "
                          f"only those: choose another --out or empty it yourself")


def partial_dir(target: Path) -> Path:
    """A fresh temporary folder beside `target` for this process; leftovers of dead processes are removed."""
    prefix = f".{target.name}.partial-"
    for stale in target.parent.glob(prefix + "*") if target.parent.is_dir() else []:
        pid = stale.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)  # a killed run's half-written folder (it may hold GBs)
    partial = target.parent / f"{prefix}{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial


def replace(partial: Path, target: Path) -> None:
    """Move the finished `partial` to `target`; an old `target` (already checked by `check_out`) goes last."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    partial.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a kill never leaves half a file (the temporary name is
    per process: concurrent writers never share one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
