"""scripts/frontier_recipe.py's opt-in students, verbs mocked: `--extra e5` fits configs/frontier/e5.yaml on the
reference's data (STS-B train + silver pairs and both caches), exports it with ONNX int8, and grows the time cap."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scripts_loader import load_script


class Stop(Exception):
    pass


def recipe_module():
    return load_script("frontier_recipe")


@pytest.mark.parametrize(("extra", "only"), [([], False), (["e5"], False), (["e5-11"], True)])
def test_extra_student_fits_on_the_reference_data_and_exports_int8(extra, only, tmp_path, monkeypatch):
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
                                      *(["--extra", *extra] if extra else []), *(["--only_extra"] if only else [])])
    with pytest.raises(Stop):
        module.main()
    base = module.ONLY_EXTRA_BASE_MIN if only else module.CAP_MIN
    assert caps == [(base + sum(module.EXTRA_MIN[e] for e in extra)) * 60]
    if not extra:
        assert "e5" not in fits and "e5" not in exports
        return
    name = extra[0]
    config, extra_args = fits[name]
    assert config[config.index(f"configs/frontier/{name}.yaml") - 1] == "--config"
    assert "configs/frontier/silver.yaml" in config and "configs/frontier/e5.yaml" in config
    assert "--data.init_args.train=[stsb/train, silver.parquet]" in extra_args  # the reference's data
    assert "--data.init_args.cache_dir=[cache/train, silver-cache]" in extra_args  # both caches
    assert exports[name] is True
    if only:  # no default student: the extra one alone, still on the reference's data
        assert list(fits) == [name] and list(exports) == [name]
        return
    assert extra_args == fits[module.REFERENCE][1]
    assert list(fits)[-1] == name  # after every default student (the pool students learn the reference first)


def test_only_extra_needs_an_extra_student(monkeypatch, capsys):
    module = recipe_module()
    monkeypatch.setattr(sys, "argv", ["frontier_recipe.py", "--only_extra"])
    with pytest.raises(SystemExit):
        module.main()
    assert "--only_extra needs the students to train: add --extra" in capsys.readouterr().err
