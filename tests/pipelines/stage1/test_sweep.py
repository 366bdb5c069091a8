"""scripts/sweep_stage1.py: candidates run the real stage-1 nodes, finished ones are skipped."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.t2i import T2IParams

ROOT = Path(__file__).resolve().parents[3]


def _load_script():
    spec = importlib.util.spec_from_file_location("sweep_stage1", ROOT / "scripts/sweep_stage1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load_script()


def _base(tiny_sd, tmp_path) -> dict:
    probe = tmp_path / "probe"
    AttributeProbe(image_size=16, width=4, hidden=8).save_pretrained(probe)
    return {
        "encoder": {
            "backbone": "small",
            "num_queries": 4,
            "small": {"width": 16, "stem_channels": [8, 16], "heads": 2, "image_size": 16},
        },
        "training": {"steps": 2, "batch_size": 4, "learning_rate": 1e-3, "log_every": 1},
        "validation": {
            "images": 4,
            "grid_images": 2,
            "probe": str(probe),
            "sampling": {"steps": 2, "batch_size": 4},
        },
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }


def test_overrides_set_dotted_keys_and_name_a_typo():
    base = {"training": {"steps": 3, "ema_decay": None}, "encoder": {"small": {"width": 8}}}
    out = sweep.apply_overrides(base, {"training.steps": 5, "encoder.small.width": 16})
    assert out["training"]["steps"] == 5 and out["encoder"]["small"]["width"] == 16
    assert base["training"]["steps"] == 3  # the base is not touched
    with pytest.raises(KeyError, match="stage1.trainng is not a block"):
        sweep.apply_overrides(base, {"trainng.steps": 5})


def test_the_shipped_sweep_file_holds_valid_candidates():
    """Every candidate of conf/sweeps/stage1.yml applies to conf/base and validates."""
    base = yaml.safe_load((ROOT / "conf/base/parameters_stage1.yml").read_text())["stage1"]
    candidates = sweep.load_sweep(ROOT / "conf/sweeps/stage1.yml")
    assert candidates["final1200"]["overrides"] == {}  # conf/base as it is
    assert candidates["final"]["overrides"]["training.steps"] == 2000  # the recipe before it
    before = candidates["ref"]["overrides"]  # the recipe before the sweep, restated
    assert before["encoder.small.latent_stem_channels"] == [] and before["training.steps"] == 1000
    for name, body in candidates.items():
        params = Stage1Params(**sweep.apply_overrides(base, body["overrides"]))
        assert params.encoder.backbone == "small", name


def test_a_sweep_runs_candidates_once_and_prints_one_table(tiny_sd, data, tmp_path, capsys):
    base = _base(tiny_sd, tmp_path)
    t2i = T2IParams(model=str(tiny_sd))  # params:t2i, which every candidate distils
    candidates = {
        "ref": {"note": "as configured", "overrides": {}},
        "strat": {"note": "stratified", "overrides": {"timestep_sampling": "stratified"}},
    }
    results = tmp_path / "sweep.jsonl"
    loads = []

    def load_data(params):
        loads.append(params)
        return data

    rows = sweep.run_sweep(load_data, base, candidates, results, t2i=t2i, split="test")
    assert [r["name"] for r in rows] == ["ref", "strat"] and len(loads) == 1
    saved = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["name"] for r in saved] == ["ref", "strat"]
    assert all(r["split"] == "test" and r["images"] == 4 and r["steps"] == 2 for r in saved)
    assert 0 <= saved[0]["reconstruction"]["exact_scene"] <= 1

    # a rerun trains nothing (the rows are there) and does not even load the data
    assert sweep.run_sweep(load_data, base, candidates, results, t2i=t2i, split="test") == []
    assert len(loads) == 1
    # another seed is another row
    again = sweep.run_sweep(
        load_data, base, {"ref": candidates["ref"]}, results, t2i=t2i, split="test", seed=1
    )
    assert [(r["name"], r["seed"]) for r in again] == [("ref", 1)]

    table = sweep.markdown_table(sweep.read_rows(results))
    assert len({line.count("|") for line in table.splitlines()}) == 1  # every row has every column
    assert table.count("\n| ref |") == 2 and "| strat | 0 | 2 | test |" in table
    sweep.main(["--results", str(results), "--table"])
    assert "| strat |" in capsys.readouterr().out

    # a curve point: the same candidate at other steps; the curve is its rows, by steps
    sweep.run_sweep(
        load_data, base, {"ref": candidates["ref"]}, results, t2i=t2i, split="test", steps=3
    )
    curve = sweep.curve_rows(sweep.read_rows(results), "ref", "test")
    assert [(r["steps"], r["seed"]) for r in curve] == [(2, 0), (2, 1), (3, 0)]
    plot = tmp_path / "docs" / "curve.png"
    sweep.main(
        ["--results", str(results), "--split", "test", "--curve", "ref", "--plot", str(plot)]
    )
    out = capsys.readouterr().out
    assert "| 3 | 0 |" in out and plot.stat().st_size > 1000
    assert not list(plot.parent.glob("*.tmp.png"))


def test_a_kedro_run_becomes_a_row_and_an_old_log_is_named():
    rec = {"exact_scene": 0.5, "attributes": 0.9}
    rec.update(position=1.0, shape=0.8, colour=0.9, size=0.9)
    metrics = {"split": "test", "images": 256, "reconstruction": rec}
    log = {"steps": 2000, "seed": 1, "seconds": 800.0, "history": [{"step": 2000, "loss": 1.5}]}
    row = sweep.row_from_run("final", "note", metrics, log)
    assert sweep.row_key(row) == ("final", 1, 2000, "test")
    assert row["seconds_per_step"] == pytest.approx(0.4)
    assert "| 2000 | 1 | 50.0% | 90.0% | 13.3 | 0.400 |" in sweep.curve_table([row])
    with pytest.raises(SystemExit, match="no 'seed'"):
        sweep.row_from_run("final", "", metrics, {k: v for k, v in log.items() if k != "seed"})
