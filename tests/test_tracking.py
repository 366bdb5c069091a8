"""MLflow tracking is optional: off by default, and it never breaks a run."""

import sys
import types

from vlv_pipeline import tracking


def test_off_unless_switched_on(monkeypatch):
    monkeypatch.delenv("VLV_MLFLOW", raising=False)
    assert not tracking.enabled()
    import importlib

    import vlv_pipeline.settings as settings

    assert "kedro-mlflow" in importlib.reload(settings).DISABLE_HOOKS_FOR_PLUGINS
    monkeypatch.setenv("VLV_MLFLOW", "1")
    assert importlib.reload(settings).DISABLE_HOOKS_FOR_PLUGINS == ()
    # under `accelerate launch`, rank 0 alone opens the launch's MLflow run
    monkeypatch.setenv("RANK", "1")
    assert "kedro-mlflow" in importlib.reload(settings).DISABLE_HOOKS_FOR_PLUGINS
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("VLV_MLFLOW")
    importlib.reload(settings)


def test_metrics_are_flattened_and_logged_to_the_active_run(monkeypatch):
    logged = {}
    fake = types.SimpleNamespace(
        active_run=lambda: object(), log_metrics=lambda m: logged.update(m)
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("VLV_MLFLOW", "1")
    metrics = {"images": 4, "captions": {"vlv": {"exact_scene": 0.5, "what": "x"}}, "ok": True}
    tracking.MlflowMetricsHook().after_dataset_saved("eval_metrics", metrics, None)
    assert logged == {"eval_metrics.images": 4.0, "eval_metrics.captions.vlv.exact_scene": 0.5}


def test_a_failing_tracker_or_no_mlflow_never_breaks_the_run(monkeypatch):
    def boom(metrics):
        raise RuntimeError("tracking server down")

    monkeypatch.setenv("VLV_MLFLOW", "1")
    monkeypatch.setitem(
        sys.modules, "mlflow", types.SimpleNamespace(active_run=lambda: 1, log_metrics=boom)
    )
    tracking.MlflowMetricsHook().after_dataset_saved("stage1_metrics", {"a": 1.0}, None)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed: import fails
    tracking.MlflowMetricsHook().after_dataset_saved("stage1_metrics", {"a": 1.0}, None)


def test_training_curves_go_into_the_open_mlflow_run(monkeypatch, tmp_path):
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from vlv_pipeline.params.training import TrainParams
    from vlv_pipeline.training.loop import train

    logged, started = [], []
    fake = types.SimpleNamespace(
        active_run=lambda: object(),  # kedro-mlflow's run, already open
        start_run=lambda *a, **k: started.append(a),
        log_metrics=lambda metrics, step=None: logged.append((step, metrics)),
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("VLV_MLFLOW", "1")

    class Squares(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, batch):
            return (self.linear(batch[0]) ** 2).mean()

    train(
        Squares(),
        TensorDataset(torch.randn(32, 4)),
        TrainParams(steps=4, batch_size=8, learning_rate=0.1, log_every=2, trackers=[]),
        checkpoint_dir=tmp_path,
        desc="stage 1",
    )
    assert not started  # no second run
    assert [step for step, _ in logged] == [2, 4]
    assert set(logged[0][1]) == {
        "stage1/step",
        "stage1/loss",
        "stage1/lr",
        "stage1/grad_norm",
        "stage1/images_per_s",
    }


def test_typed_parameter_sections_are_logged_flattened(monkeypatch):
    """Kedro hands nodes their parameter sections as pydantic models, which kedro-mlflow logs
    as one string each: the hook logs them key by key (plain dicts kedro-mlflow flattens)."""
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Node, Pipeline
    from pydantic import BaseModel

    class Training(BaseModel):
        steps: int = 2
        betas: tuple[float, float] = (0.9, 0.99)

    class Stage(BaseModel):
        training: Training = Training()
        probe: str | None = None

    logged = {}
    fake = types.SimpleNamespace(active_run=lambda: object(), log_params=logged.update)
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("VLV_MLFLOW", "1")
    catalog = DataCatalog(
        {"params:stage1": MemoryDataset(Stage()), "params:rating": MemoryDataset({"images": 8})}
    )
    pipeline = Pipeline([Node(lambda a, b: None, ["params:stage1", "params:rating"], None)])
    tracking.MlflowMetricsHook().before_pipeline_run({}, pipeline, catalog)
    assert logged == {
        "stage1.training.steps": "2",
        "stage1.training.betas": "[0.9, 0.99]",
        "stage1.probe": "None",
    }
