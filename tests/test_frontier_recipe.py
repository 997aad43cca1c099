"""scripts/frontier_recipe.py's opt-in students, verbs mocked: `--extra e5` fits configs/frontier/e5.yaml on the
reference's data (STS-B train + silver pairs and both caches), exports it with ONNX int8, and grows the time cap."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    pass


def recipe_module():
    spec = importlib.util.spec_from_file_location("frontier_recipe", ROOT / "scripts" / "frontier_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", [[], ["e5"]])
def test_extra_student_fits_on_the_reference_data_and_exports_int8(extra, tmp_path, monkeypatch):
    module = recipe_module()
    fits: dict[str, tuple[list[str], list[str]]] = {}
    exports: dict[str, bool] = {}
    caps: list[float | None] = []
    monkeypatch.chdir(tmp_path)  # open_recipe moves to the repository root: come back after
    monkeypatch.setattr(module, "teacher_and_cache", lambda recipe, out, smoke: ("teacher.ckpt", "cache/train"))
    monkeypatch.setattr(module, "silver", lambda recipe, out, teacher, smoke: (Path("silver.parquet"),
                                                                                Path("silver-cache")))

    def fit(out, name, config, extra_args):
        fits[name] = (config, extra_args)
        return {"checkpoint": f"{name}.ckpt", "dev_spearman": 0.5, "fit_s": 0.0}

    def export(ckpt, folder, layers=None, dims=None, onnx=True):
        exports[folder.name] = onnx
        return {"folder": str(folder), "onnx": onnx, "int8": onnx, "int8_refused": None}

    def stop(*args, **kwargs):
        raise Stop

    opened = module.open_recipe

    def open_recipe(args, *rest):
        recipe = opened(args, *rest)
        caps.append(recipe.time_cap_s)
        return recipe

    monkeypatch.setattr(module, "fit", fit)
    monkeypatch.setattr(module, "export", export)
    monkeypatch.setattr(module, "accuracy_and_speed", stop)
    monkeypatch.setattr(module, "open_recipe", open_recipe)
    monkeypatch.setattr(sys, "argv", ["frontier_recipe.py", "--out", str(tmp_path / "frontier"),
                                      *(["--extra", *extra] if extra else [])])
    with pytest.raises(Stop):
        module.main()
    assert caps == [(module.CAP_MIN + sum(module.EXTRA_MIN[e] for e in extra)) * 60]
    if not extra:
        assert "e5" not in fits and "e5" not in exports
        return
    config, extra_args = fits["e5"]
    assert config[config.index("configs/frontier/e5.yaml") - 1] == "--config"
    assert "configs/frontier/silver.yaml" in config
    assert extra_args == fits[module.REFERENCE][1]  # the reference's data: train + silver pairs, both caches
    assert any("silver.parquet" in a for a in extra_args) and any("silver-cache" in a for a in extra_args)
    assert exports["e5"] is True
    assert list(fits)[-1] == "e5"  # after every default student (the pool students learn the reference first)
