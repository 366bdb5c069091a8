"""The MLflow path with the real packages (the `mlflow` extra: mlflow and kedro-mlflow, as
constraints.txt pins them), offline, against a local SQLite backend store.

One `VLV_MLFLOW=1 kedro run --pipelines world,ingest,cache,stage1` in a tiny copy of the
project (16 training images, three stage-1 steps), run from its root with the shipped
conf/base/mlflow.yml: the store is `<tmp project>/mlflow.db`, the artefacts are under
`<tmp project>/mlruns`. Then MlflowClient reads back what the MLflow UI would show: the run
in the experiment mlflow.yml names, its flattened parameters, the training curves step by
step, the validation metric and grid logged during training, the stage's metrics, and the trained encoder's directory (model card included) among
the run's artefacts, file for file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_end_to_end import copy_project

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))
STEPS = 3

TINY = f"""
world: {{counts: {{train: 16, val: 8, test: 8}}}}
stage1:
  training: {{steps: {STEPS}, batch_size: 8, warmup_steps: 0, checkpoint_every: {STEPS}, log_every: 1}}
  validation: {{images: 8, grid_images: 4, sampling: {{steps: 2, batch_size: 8}}, every: {STEPS}}}
"""


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    for package in ("mlflow", "kedro_mlflow"):
        pytest.importorskip(
            package, reason="the mlflow extra: pip install -c constraints.txt -e '.[mlflow]'"
        )
    project = copy_project(tmp_path_factory.mktemp("mlflow") / "project")
    (project / "conf/local").mkdir()
    (project / "conf/local/parameters.yml").write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VLV_"))}
    env.pop("KEDRO_LOGGING_CONFIG", None)
    env.update(
        VLV_MLFLOW="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        KEDRO_DISABLE_TELEMETRY="true",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    run = subprocess.run(
        [KEDRO, "run", "--pipelines", "world,ingest,cache,stage1"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return project


@pytest.fixture(scope="module")
def client_and_run(tracked_run):
    from mlflow.tracking import MlflowClient

    store = tracked_run / "mlflow.db"
    assert store.is_file()  # sqlite:///mlflow.db of conf/base/mlflow.yml, in the project
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    name = yaml.safe_load((ROOT / "conf/base/mlflow.yml").read_text())["tracking"]["experiment"][
        "name"
    ]
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r}"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_the_run_is_recorded_in_the_configured_experiment(client_and_run):
    _, run = client_and_run
    assert run.info.status == "FINISHED"
    assert set(run.info.run_name.split("+")) == {"world", "ingest", "cache", "stage1"}
    assert run.data.tags["kedro_command"].startswith("kedro run")


@pytest.mark.slow
def test_the_project_parameters_are_logged_flattened(client_and_run):
    _, run = client_and_run
    params = run.data.params
    assert params["stage1.training.steps"] == str(STEPS)  # conf/local's tiny value
    assert params["stage1.training.batch_size"] == "8"
    assert params["stage1.encoder.backbone"] == "small"  # conf/base's
    assert params["world.counts.train"] == "16"
    assert params["t2i.model"] == "src/vlv_pipeline/assets/teacher"  # the one T2I block
    assert "ingest.min_side" in params


@pytest.mark.slow
def test_the_training_curves_have_a_point_per_logged_step(client_and_run):
    client, run = client_and_run
    for key in ("stage1/loss", "stage1/lr", "stage1/grad_norm"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), key
    losses = client.get_metric_history(run.info.run_id, "stage1/loss")
    assert all(m.value > 0 for m in losses)
    # the validation during training: its metric and its grid image, at the step it ran
    validation = [k for k in run.data.metrics if k.startswith("stage1/validation/")]
    assert validation
    assert [m.step for m in client.get_metric_history(run.info.run_id, validation[0])] == [STEPS]
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(
        path.startswith("images/stage1~validation~") and f"+step+{STEPS}+" in path
        for path in images
    ), images
    # the stage's metrics (MlflowMetricsHook), flattened
    assert "stage1_metrics.reconstruction.exact_scene" in run.data.metrics


@pytest.mark.slow
def test_the_trained_encoder_is_among_the_runs_artefacts(tracked_run, client_and_run, tmp_path):
    client, run = client_and_run
    assert run.info.artifact_uri.startswith((tracked_run / "mlruns").as_uri())
    listed = {
        Path(a.path).name for a in client.list_artifacts(run.info.run_id, "models/vlv_encoder")
    }
    (saved,) = (tracked_run / "data/06_models/vlv_encoder").glob("*/vlv_encoder")
    assert {"config.json", "README.md"} <= listed  # the model card, written after the model
    assert any(name.endswith(".safetensors") for name in listed)
    assert listed == {p.name for p in saved.iterdir()}
    from mlflow.artifacts import download_artifacts

    local = Path(
        download_artifacts(
            run_id=run.info.run_id,
            artifact_path="models/vlv_encoder",
            dst_path=str(tmp_path),
            tracking_uri=client.tracking_uri,
        )
    )
    for path in saved.iterdir():
        assert (local / path.name).read_bytes() == path.read_bytes(), path.name
