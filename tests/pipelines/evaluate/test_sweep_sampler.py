"""scripts/sweep_sampler.py: candidates render through the evaluation's own path on val images,
each (candidate, seed) once; the reference is timed in every run; the table pairs each
candidate with it (issue 28)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from world_factory import render_and_ingest

from vlv_pipeline.models.encoders import build_encoder
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.teachers import load_teacher
from vlv_pipeline.params.stage1 import EncoderParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.params.teacher import Sampler
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.evaluate import nodes

ROOT = Path(__file__).resolve().parents[3]


def _load_script():
    path = ROOT / "scripts/sweep_sampler.py"
    spec = importlib.util.spec_from_file_location("sweep_sampler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load_script()

TINY_SWEEP = {
    "reference": "ref",
    "candidates": {
        "ref": {"note": "DDIM", "overrides": {"scheduler": "DDIMScheduler", "steps": 3}},
        "dpm2": {
            "note": "DPM",
            "overrides": {"scheduler": "DPMSolverMultistepScheduler", "steps": 2},
        },
        "unipc2": {
            "note": "UniPC",
            "overrides": {"scheduler": "UniPCMultistepScheduler", "steps": 2},
        },
    },
}


def _write_sweep(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_shipped_sweep_file_holds_the_issues_candidates():
    base = yaml.safe_load((ROOT / "conf/base/parameters_evaluate.yml").read_text())["evaluate"]
    reference, candidates = sweep.load_candidates(
        ROOT / "conf/sweeps/sampler.yml", base["sampling"]
    )
    assert reference == "ddim25"
    made = {n: sweep.sampling_of(base["sampling"], b) for n, b in candidates.items()}
    assert made["ddim25"] == {**base["sampling"], "scheduler": "DDIMScheduler", "steps": 25}
    short = {"DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpm"}
    short["UniPCMultistepScheduler"] = "unipc"
    assert {(s["scheduler"], s["steps"]) for s in made.values()} == {
        ("DDIMScheduler", 25),
        ("DDIMScheduler", 15),
        ("DDIMScheduler", 10),
        *((k, n) for k in short if k != "DDIMScheduler" for n in (8, 10, 15)),
    }
    for name, s in made.items():  # named for what they are, and valid samplers
        assert name == f"{short[s['scheduler']]}{s['steps']}" and s["scheduler"] in Sampler.__args__
        assert s["batch_size"] == base["sampling"]["batch_size"] and s["guidance"] == 1.0
    # the reference runs first, whatever --only says
    assert sweep.chosen(["dpm8", "ddim25"], reference, candidates) == ["ddim25", "dpm8"]
    assert sweep.chosen(None, reference, candidates)[0] == "ddim25"
    with pytest.raises(SystemExit, match="unknown candidates"):
        sweep.chosen(["dpm9"], reference, candidates)
    # a render seed replaces conf's
    assert sweep.sampling_of(base["sampling"], candidates["dpm8"], seed=1)["seed"] == 1


def test_a_wrong_candidate_or_reference_is_named(tmp_path):
    bad = {"reference": "ref", "candidates": {"ref": {"overrides": {"scheduler": "Euler"}}}}
    with pytest.raises(SystemExit, match="candidate 'ref'"):
        sweep.load_candidates(_write_sweep(tmp_path / "a.yml", bad))
    typo = {"reference": "ref", "candidates": {"ref": {"overrides": {"step": 8}}}}
    with pytest.raises(SystemExit, match="candidate 'ref'"):
        sweep.load_candidates(_write_sweep(tmp_path / "b.yml", typo))
    none = {"candidates": TINY_SWEEP["candidates"]}
    with pytest.raises(SystemExit, match="`reference:` must name one of"):
        sweep.load_candidates(_write_sweep(tmp_path / "c.yml", none))
    with pytest.raises(SystemExit, match="not found"):
        sweep.load_candidates(tmp_path / "missing.yml")


def test_mcnemar_and_the_missing_encoders_message():
    assert sweep.mcnemar_p(0, 0) == 1.0 and sweep.mcnemar_p(3, 3) == 1.0
    assert sweep.mcnemar_p(10, 0) == pytest.approx(2 / 2**10)
    assert sweep.mcnemar_p(1, 6) == sweep.mcnemar_p(6, 1) == pytest.approx(2 * 8 / 128)
    message = sweep.missing_encoder_message(None)
    assert "vlv_encoder" in message and "`make run`" in message
    assert "`kedro run --pipeline stage1`" in message
    assert "`kedro run --env rehearsal --pipeline stage1`" in sweep.missing_encoder_message(
        "rehearsal"
    )


def _row(name, exact, seconds, *, reference=False, seed=0, steps=25, scheduler="DDIMScheduler"):
    return {
        "name": name,
        "note": f"{name} note",
        "is_reference": reference,
        "scheduler": scheduler,
        "steps": steps,
        "seed": seed,
        "split": "val",
        "images": len(exact),
        "images_digest": "abc",
        "encoder": "v1",
        "reconstruction": {"exact_scene": sum(exact) / len(exact)},
        "exact": exact,
        "seconds_per_batch": seconds,
        "time_ratio": seconds / 4.0,
    }


def test_the_tables_give_wilson_intervals_pairs_and_time_ratios():
    ref = _row("ddim25", [True] * 8 + [False] * 2, 4.0, reference=True)
    fast = _row("dpm8", [True] * 7 + [False, True, False], 1.0, steps=8, scheduler="DPMSolver")
    table = sweep.markdown_table([ref, fast])
    assert len({line.count("|") for line in table.splitlines()}) == 1  # every column, every row
    interval = sweep.wilson(0.8, 10)
    assert f"80.0% [{interval['low']:.1%}, {interval['high']:.1%}]" in table
    assert "| ddim25 | DDIMScheduler | 25 | 0 | 80.0% [" in table
    assert "| reference | 4.00 | 1.00x |" in table
    assert "+1 / -1 (p 1.00) | 1.00 | 0.25x | dpm8 note |" in table
    # another seed: the summary averages the seeds and adds up the pairs
    ref1 = _row("ddim25", [True] * 10, 4.0, reference=True, seed=1)
    fast1 = _row("dpm8", [True] * 9 + [False], 2.0, seed=1, steps=8, scheduler="DPMSolver")
    text = sweep.summary([ref, fast, ref1, fast1])
    assert "| ddim25 | DDIMScheduler | 25 | 2 | 90.0% | 80.0% | reference | 1.00x |" in text
    assert "| dpm8 | DPMSolver | 8 | 2 | 85.0% | 80.0% | +1 / -2 (p 1.00) | 0.38x |" in text
    # rows on other images are not paired
    other = {**fast, "images_digest": "xyz"}
    assert "| - |" in sweep.markdown_table([ref, other])


@pytest.fixture(scope="module")
def val_world(tiny_sd, tmp_path_factory):
    """6 val images of a 16 px world, an untrained small encoder for the tiny SD, a probe."""
    root = tmp_path_factory.mktemp("sampler-world")
    world = WorldParams(image_size=16, counts={"train": 4, "val": 6, "test": 2})
    source, manifest = render_and_ingest(root, world)
    t2i = load_teacher(str(tiny_sd))
    spec = EncoderParams(
        backbone="small",
        num_queries=4,
        small={"width": 16, "stem_channels": [8, 16], "heads": 2, "image_size": 16},
    )
    encoder = build_encoder(
        spec, t2i.width, t2i.vae, t2i.text_encoder.get_input_embeddings().weight
    )
    AttributeProbe(image_size=16, width=4, hidden=8).save_pretrained(root / "probe")
    evaluate = {
        "render_t2i": str(tiny_sd),
        "split": "test",  # the sweep's protocol makes it val
        "images": 256,
        "sampling": {"steps": 25, "batch_size": 4},
        "probe": str(root / "probe"),
        "grid_images": 2,
    }
    params = sweep.protocol_params(evaluate, images=5)
    data = nodes.load_eval_data(source, manifest, params)
    return encoder.eval(), data, params, manifest


def test_a_sweep_renders_val_once_per_candidate_and_seed(val_world, tmp_path, capsys):
    encoder, data, params, manifest = val_world
    val = sorted(manifest.loc[manifest["split"] == "val", "image_id"].astype(str))
    assert params.split == "val" and data.image_ids == val[:5]  # the first 5 val images
    sweep_file = _write_sweep(tmp_path / "sweep.yml", TINY_SWEEP)
    reference, candidates = sweep.load_candidates(sweep_file, params.sampling.model_dump())
    results = tmp_path / "sampler.jsonl"
    lines = []

    def run(names, seeds):
        names = sweep.chosen(names, reference, candidates)
        return sweep.run_sweep(
            encoder,
            data,
            params,
            {n: candidates[n] for n in names},
            reference,
            results,
            seeds=seeds,
            encoder_id="v1",
            t2i=T2IParams(model=params.render_t2i),  # the same tiny SD renders both
            log=lines.append,
        )

    added = run(["dpm2"], [0])
    assert [r["name"] for r in added] == ["ref", "dpm2"]  # the reference first
    ref, dpm = added
    assert ref["is_reference"] and ref["time_ratio"] == 1.0 and ref["steps"] == 3
    assert (dpm["scheduler"], dpm["steps"], dpm["split"]) == (
        "DPMSolverMultistepScheduler",
        2,
        "val",
    )
    for row in added:
        assert row["images"] == 5 and len(row["exact"]) == 5 and len(row["batch_seconds"]) == 2
        assert row["images_digest"] == ref["images_digest"] and row["batch_size"] == 4
        assert 0 <= row["reconstruction"]["exact_scene"] <= 1
        assert row["reconstruction"]["exact_scene"] == pytest.approx(sum(row["exact"]) / 5)
        assert row["seconds_per_batch"] > 0
    assert dpm["reference_seconds_per_batch"] == ref["seconds_per_batch"]
    assert [json.loads(line)["name"] for line in results.read_text().splitlines()] == [
        "ref",
        "dpm2",
    ]

    # resumable: nothing left, nothing rendered
    assert run(["dpm2"], [0]) == [] and "dpm2 seed 0: done already" in lines[-1]
    # a new candidate: the reference is timed again in this run, not written twice
    more = run(["unipc2"], [0])
    assert [r["name"] for r in more] == ["unipc2"]
    assert any("ref seed 0: timed again" in line for line in lines)
    assert more[0]["reference_seconds_per_batch"] != ref["seconds_per_batch"]  # measured anew
    # the same noise for every candidate: rendered again, the reference reads the same
    assert not any("warning" in line for line in lines)
    # a second render seed is another row per candidate
    again = run(None, [0, 1])
    assert [(r["name"], r["seed"]) for r in again] == [("ref", 1), ("dpm2", 1), ("unipc2", 1)]

    sweep.main(["--sweep", str(sweep_file), "--results", str(results), "--table"])
    out = capsys.readouterr().out
    assert (
        out.count("| ref | DDIMScheduler | 3 |") == 3  # two seeds, the summary
        and "| dpm2 | DPMSolverMultistepScheduler | 2 | 2 |" in out
    )
    assert out.count("| reference |") == 3  # two seeds in the table, one in the summary


@pytest.mark.slow
def test_the_script_names_what_to_run_then_sweeps_a_tiny_default_run(tmp_path):
    """In a copy of the project: before stage 1 has run, the script says what to run; after a
    tiny `kedro run` of world, ingest, cache and stage1, it sweeps that run's encoder."""
    from test_end_to_end import copy_project

    project = copy_project(tmp_path / "project")
    (project / "conf/local").mkdir()
    (project / "conf/local/parameters.yml").write_text(
        "world: {counts: {train: 16, val: 6, test: 2}}\n"
        "stage1:\n"
        "  training: {steps: 2, batch_size: 8, warmup_steps: 0}\n"
        "  validation: {images: 2, grid_images: 2, sampling: {steps: 2, batch_size: 2}}\n"
        "evaluate: {sampling: {batch_size: 4}}\n"
    )
    sweep_file = _write_sweep(
        tmp_path / "sweep.yml",
        {
            "reference": "ddim25",
            "candidates": {
                "ddim25": {"overrides": {"scheduler": "DDIMScheduler", "steps": 25}},
                "unipc8": {"overrides": {"scheduler": "UniPCMultistepScheduler", "steps": 8}},
            },
        },
    )
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    script = [sys.executable, str(ROOT / "scripts/sweep_sampler.py"), "--project", str(project)]
    script += ["--sweep", str(sweep_file), "--results", str(tmp_path / "out.jsonl")]

    def sweep_run():
        return subprocess.run(
            [*script, "--images", "5"], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    before = sweep_run()
    assert before.returncode == 1 and "no trained stage-1 encoder" in before.stderr
    assert "`make run`" in before.stderr and "`kedro run --pipeline stage1`" in before.stderr
    kedro = str(Path(sys.executable).with_name("kedro"))
    pipelines = "world,ingest,cache,stage1"
    trained = subprocess.run(
        [kedro, "run", "--pipelines", pipelines],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    after = sweep_run()
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["name"], r["split"], r["images"]) for r in rows] == [
        ("ddim25", "val", 5),
        ("unipc8", "val", 5),
    ]
    version = next((project / "data/06_models/vlv_encoder").iterdir()).name
    assert {r["encoder"] for r in rows} == {version}  # the run's encoder, by its version
    assert "| unipc8 | UniPCMultistepScheduler | 8 | 0 |" in after.stdout
