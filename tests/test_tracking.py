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
