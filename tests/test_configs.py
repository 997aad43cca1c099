"""Shipped configs: each opens with the full command that runs it, parses, and an overlay changes only what it names."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from distill.cli import TRAINER_VERBS, run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def command(config: Path) -> tuple[str, tuple[str, ...]]:
    """The verb and the stacked `--config` files of a config's first line (`# distill <verb> --config ...`)."""
    first = config.read_text().splitlines()[0]
    assert first.startswith("# distill "), f"{config}: the first line must be the command that runs it: {first}"
    words = first[2:].split()  # config paths have no spaces; placeholders like <best .ckpt> may have quotes
    stacked = tuple(words[i + 1] for i, w in enumerate(words) if w == "--config")
    assert stacked and stacked[-1] == str(config.relative_to(ROOT)), \
        f"{config}: its own command must end its --config list: {first}"
    return words[1], stacked


@functools.cache
def printed(verb: str, stacked: tuple[str, ...]) -> str:
    """`distill <verb> --config ... --print_config`, once per command (bases are shared by several overlays)."""
    args = [a for c in stacked for a in ("--config", str(ROOT / c))]
    with mock.patch("sys.argv", ["distill"]), mock.patch("sys.stdout.write") as write, \
            pytest.raises(SystemExit) as done:
        run([verb, *args, "--print_config"])
    assert done.value.code in (0, None)
    return "".join(call.args[0] for call in write.call_args_list)


def flat(node: Any, key: str = "") -> dict[str, Any]:
    """Dotted keys to leaves; lists are leaves (an overlay's list replaces the base's)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flat(v, f"{key}.{k}" if key else str(k)))
        return out
    return {key: node}


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT)) for c in CONFIGS])
def test_config_parses_with_the_command_on_its_first_line(config: Path):
    verb, stacked = command(config)
    text = printed(verb, stacked)
    # Trainer verbs and `cache` build parts by class_path; the other tools take plain keys
    assert "class_path" in text if verb in (*TRAINER_VERBS, "cache") else text.strip()


OVERLAYS = [c for c in CONFIGS if len(command(c)[1]) > 1]


def test_the_variants_are_overlays():
    """The variants are short files on a base recipe, not near-copies of it."""
    names = {str(c.relative_to(ROOT)) for c in OVERLAYS}
    assert {"configs/teacher/strong.yaml", "configs/student/silver.yaml", "configs/cache/strong.yaml",
            "configs/cache/silver.yaml", "configs/multilingual/gold-only.yaml", "configs/multilingual/gpu.yaml",
            "configs/multilingual/trimmed.yaml"} <= names


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[str(c.relative_to(ROOT)) for c in OVERLAYS])
def test_overlay_changes_only_the_keys_it_names(overlay: Path):
    verb, stacked = command(overlay)
    base = flat(yaml.safe_load(printed(verb, stacked[:-1])))
    stacked_on = flat(yaml.safe_load(printed(verb, stacked)))
    # `key+:` appends to the base's list (jsonargparse): it names `key`
    named = {k.replace("+.", ".").removesuffix("+") for k in flat(yaml.safe_load(overlay.read_text()))}
    # a part the overlay picks by class_path brings its whole init_args (defaults included)
    named |= {n.removesuffix(".class_path") for n in named if n.endswith(".class_path")}
    changed = {k for k in base.keys() | stacked_on.keys() if base.get(k, "<absent>") != stacked_on.get(k, "<absent>")}
    unnamed = sorted(k for k in changed if not any(k == n or k.startswith(n + ".") for n in named))
    assert not unnamed, f"{overlay.name} changes keys it does not name: {unnamed}"
    assert changed, f"{overlay.name} changes nothing"
