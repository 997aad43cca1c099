"""`--overwrite` replaces only folders the verb wrote; killed runs' partial folders are cleaned (issue 15)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill import outdir
from distill.export import ExportError
from distill.export import main as export
from distill.trim import TrimError
from distill.trim import main as trim


def test_overwrite_refuses_the_current_folder_and_foreign_folders(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    (work / "runs" / "a").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for target in (Path("."), work, tmp_path):
        with pytest.raises(outdir.OutDirError, match="is the current folder or above it"):
            outdir.check_out(target, "export_report.json", "distill export", overwrite=True)
    with pytest.raises(outdir.OutDirError, match=r"runs is not empty and is not a folder distill export wrote \(no "
                                                 r"export_report.json\)"):
        outdir.check_out(Path("runs"), "export_report.json", "distill export", overwrite=True)
    with pytest.raises(outdir.OutDirError, match="notes.txt is a file"):
        outdir.check_out(Path("notes.txt"), "export_report.json", "distill export", overwrite=True)
    with pytest.raises(outdir.OutDirError, match="exists; pass --overwrite"):
        outdir.check_out(Path("runs"), "export_report.json", "distill export", overwrite=False)
    (work / "runs" / "a" / "export_report.json").write_text("{}")
    outdir.check_out(Path("runs/a"), "export_report.json", "distill export", overwrite=True)  # its own: fine
    (work / "empty").mkdir()
    outdir.check_out(Path("empty"), "export_report.json", "distill export", overwrite=True)
    assert (work / "notes.txt").read_text() == "mine" and (work / "runs" / "a").is_dir()  # nothing was removed


def test_export_over_the_run_folder_holding_the_checkpoint_is_refused(student_ckpt: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(Path(student_ckpt).parent, run / "checkpoints")
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    (run / "export_report.json").write_text("{}")  # even a folder that looks like an export's
    with pytest.raises(ExportError, match=r"holds .*\.ckpt, which distill export reads"):
        export(str(ckpt), str(run), overwrite=True)
    assert ckpt.is_file()


def test_trim_overwrite_refuses_a_folder_it_did_not_write(tmp_path: Path, tiny_backbone: str) -> None:
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "keep.json").write_text("{}")
    with pytest.raises(TrimError, match=r"results is not empty and is not a folder distill trim wrote"):
        trim(tiny_backbone, str(foreign), corpus=["x.txt"], overwrite=True)
    assert (foreign / "keep.json").is_file()


def test_partial_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "student"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    (tmp_path / f".student.partial-{dead.pid}").mkdir()
    live = tmp_path / f".student.partial-{os.getppid()}"  # our parent runs
    live.mkdir()
    other = tmp_path / f".teacher.partial-{dead.pid}"  # another --out's: not ours to remove
    other.mkdir()
    partial = outdir.partial_dir(target)
    assert partial.name == f".student.partial-{os.getpid()}"
    assert not (tmp_path / f".student.partial-{dead.pid}").exists() and live.is_dir() and other.is_dir()
    partial.mkdir()
    (partial / "export_report.json").write_text("{}")
    outdir.replace(partial, target)
    assert (target / "export_report.json").is_file() and not partial.exists()
