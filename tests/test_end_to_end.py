"""`kedro run` of the whole default chain in a tiny copy of the project, then the notebook on it.

Slow (about a minute): a scaled-down world (80 images), two steps of every training, two
sampling steps. It proves the pipelines connect through the real catalog (every dataset
persisted and reloaded), that the run announces its report, and that the results notebook
runs against what the run wrote.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))

TINY = """
world: {counts: {train: 64, val: 8, test: 8}}
stage1:
  training: {steps: 2, batch_size: 8, warmup_steps: 0, checkpoint_every: 1}
  validation: {images: 8, grid_images: 4, sampling: {steps: 2, batch_size: 8}}
synthesize: {fraction: 0.25}
stage2:
  training: {steps: 2, batch_size: 8, warmup_steps: 0, checkpoint_every: 1}
  generation: {max_new_tokens: 8, batch_size: 8}
  validation_images: 8
evaluate:
  images: 8
  grid_images: 4
  sampling: {steps: 2, batch_size: 8}
"""


def copy_project(project: Path) -> Path:
    """pyproject, conf (without local/) and src/ (conf names the shipped teacher under src/;
    kedro wants the source inside the project) copied into ``project``."""
    project.mkdir(exist_ok=True)
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return project


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("project"))
    (project / "conf/local").mkdir()
    (project / "conf/local/parameters.yml").write_text(TINY)
    (project / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks/vlv_results.ipynb", project / "notebooks")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [KEDRO, "run"], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return project, run.stdout


@pytest.mark.slow
def test_the_default_run_writes_and_announces_its_report(tiny_run):
    project, stdout = tiny_run
    reports = list((project / "data/08_reporting/report.html").glob("*/report.html"))
    assert len(reports) == 1
    html = reports[0].read_text()
    assert "VLV captioner" in html and "upper bound" in html and "chance" in html
    assert f"eval report: {reports[0]}" in stdout  # the run says where its report landed
    for name in ("vlv_encoder", "vlv_captioner", "baseline_captioner"):
        assert len(list((project / "data/06_models" / name).iterdir())) == 1  # one version


@pytest.mark.slow
def test_the_results_notebook_runs_on_the_run(tiny_run):
    import nbformat
    from nbclient import NotebookClient

    project, _ = tiny_run
    notebook = nbformat.read(project / "notebooks/vlv_results.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the grid and the loss curves


OUTPUTS = (
    ("data/02_intermediate", "image_manifest.parquet"),
    ("data/06_models", "vlv_encoder"),
    ("data/08_reporting", "stage1_metrics.json"),
    ("data/03_primary", "caption_pairs.parquet"),
    ("data/06_models", "vlv_captioner"),
    ("data/08_reporting", "eval_metrics.json"),
)


@pytest.mark.slow
def test_the_whole_recipe_under_accelerate_launch_saves_each_output_once(tiny_run):
    """`kedro run --pipeline vlv` (ingest to evaluate) under 2 processes (gloo on CPU): the
    ranks share ingest, cache, synthesize, the trainings and evaluate; rank 0 alone writes one
    new version of each output, and the manifest equals the single-process run's."""
    import pandas as pd

    project, _ = tiny_run
    before = {name: set((project / folder / name).iterdir()) for folder, name in OUTPUTS}
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(ROOT / "conf/accelerate/cpu_2proc.yaml"),
            "-m",
            "kedro",
            "run",
            "--pipeline",
            "vlv",
            "--params",
            "stage1.training.steps=3",  # a new stage-1 run: both ranks train it
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    new_versions = {}
    for (folder, name), old in zip(OUTPUTS, before.values(), strict=True):
        new = set((project / folder / name).iterdir()) - old
        assert len(new) == 1, f"{name}: {len(new)} new versions"
        (version,) = new
        assert [p.name for p in version.iterdir()] == [name]  # written once
        new_versions[name] = version
    manifests = [
        pd.read_parquet(v / "image_manifest.parquet")
        for v in (min(before["image_manifest.parquet"]), new_versions["image_manifest.parquet"])
    ]
    pd.testing.assert_frame_equal(manifests[1], manifests[0])  # ingest split among ranks
    assert not any((project / "data/02_intermediate/ingest_parts").glob("*/*"))
    stage1 = next((project / "data/06_models/checkpoints/stage1").glob("*/checkpoint-3"))
    assert (stage1 / "vlv_encoder").is_dir() and (stage1 / "random_states_1.pkl").is_file()
    assert run.stdout.count("eval report:") == 1  # rank 1 logs warnings only


@pytest.mark.slow
def test_the_study_runs_at_a_token_size_after_the_default_run(tiny_run):
    """`kedro run --pipeline study` with `study.size=small` on the tiny run's outputs: every
    point of the five studies runs (2 steps, 8 images) and the report and preview are written
    once, marked as not a result. This keeps the study from rotting; its numbers mean nothing."""
    import json

    from vlv_pipeline.params.study import POINTS

    project, _ = tiny_run
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [KEDRO, "run", "--pipeline", "study", "--params", "study.size=small"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    study = project / "data/08_reporting/study"
    (report,) = study.glob("study_report.html/*/study_report.html")
    html = report.read_text()
    for title in ("Data efficiency", "Query count", "stage 2", "Spatial", "Composition"):
        assert title in html
    assert "not results" in html
    assert len(list(study.glob("study_report_preview.png/*/*.png"))) == 1
    for point in POINTS:  # every point's metrics, in its own folder
        assert len(list(study.glob(f"{point}/*_metrics.json/*/*.json"))) == 1, point
    (rows,) = study.glob("data_efficiency.json/*/*.json")
    rows = json.loads(rows.read_text())["rows"]
    assert len(rows) == 8
    pairs = {r["percent"]: r["pairs"] for r in rows}
    assert pairs[1] <= pairs[3] <= pairs[10] <= pairs[30]


@pytest.mark.slow
def test_the_rehearsal_environment_runs_the_paper_path_offline(tmp_path):
    """`make rehearsal`'s two commands in a copy of the project: the world as img2dataset
    shards at 384 px, the paper's model classes built tiny, every stage of `vlv`, nothing
    downloaded, everything under data/rehearsal/."""
    import json

    import pandas as pd

    project = copy_project(tmp_path / "project")
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for args in (["--pipelines", "world,rehearsal"], ["--pipeline", "vlv"]):
        run = subprocess.run(
            [KEDRO, "run", "--env", "rehearsal", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    data = project / "data"
    assert [p.name for p in data.iterdir()] == ["rehearsal"]  # the default run's data untouched
    shards = sorted((data / "rehearsal/01_raw/shards").glob("*.tar"))
    assert [s.name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    manifest = pd.read_parquet(data / "rehearsal/02_intermediate/image_manifest.parquet")
    assert len(manifest) == 120 and manifest["source"].str.match(r"0000\d\.tar/\d{9}\.jpg").all()
    encoder = json.loads(
        next((data / "rehearsal/06_models/vlv_encoder").glob("*/*/config.json")).read_text()
    )
    assert encoder["_class_name"] == "Florence2VLVEncoder" and encoder["num_queries"] == 77
    metrics = json.loads(
        next((data / "rehearsal/08_reporting/eval_metrics.json").glob("*/*.json")).read_text()
    )
    assert metrics["judge"] == "pixels" and metrics["images"] >= 2
    assert "psnr" in metrics["reconstruction"]["from_caption"]
