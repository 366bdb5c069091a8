"""Optional experiment tracking with MLflow, through kedro-mlflow.

Off unless BOTH are true: the extra is installed (``pip install -c constraints.txt -e
".[mlflow]"``; ``make`` installs it) and ``VLV_MLFLOW=1`` is set. settings.py disables
kedro-mlflow's hooks otherwise, so installing the extra alone records nothing (the ``kedro``
command still imports mlflow for kedro-mlflow's ``kedro mlflow`` commands; settings.py turns
mlflow's usage telemetry off first).

When on, kedro-mlflow opens one MLflow run per ``kedro run`` (conf/base/mlflow.yml: a local
sqlite store, ``mlflow.db``, artefacts under ``mlruns/``) and logs each node's parameters;
the project's parameter sections reach nodes as pydantic models (Kedro validates them by the
nodes' type hints), which kedro-mlflow logs as one truncated string each, so
``MlflowMetricsHook`` also logs them flattened at the start of the run
(``stage1.training.steps``). The training loop logs its curves into the run
(``training/trackers.py``: ``stage1/loss``, ...), and ``MlflowMetricsHook`` logs every
number of the stage metrics and the evaluation metrics as they are saved. At the end of the
run, each model directory the run saved (the VLV encoder, the captioners, each with its
model card) is copied into the run's artefacts as ``models/<dataset name>``, on the main
process only; ``VLV_MLFLOW_MODELS=0`` skips that copy (paper-size models are gigabytes).
"""

from __future__ import annotations

import logging
import os
import re

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

METRIC_DATASETS = ("stage1_metrics", "stage2_metrics", "eval_metrics", "teacher_metrics")


_TRUE = {"1", "true", "yes", "on"}


def enabled() -> bool:
    return os.environ.get("VLV_MLFLOW", "").lower() in _TRUE


def log_models() -> bool:
    """Whether the run's model directories go into its artefacts (on unless
    ``VLV_MLFLOW_MODELS`` says 0/false/no/off)."""
    return os.environ.get("VLV_MLFLOW_MODELS", "1").lower() in _TRUE


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics -> {"a.b.c": number}; strings, lists and booleans are skipped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def no_predict_hint(record: logging.LogRecord) -> bool:
    """A filter for the ``py.warnings`` logger: drops mlflow's warning that kedro-mlflow's
    pyfunc model has no type hints on ``predict`` (raised on import, by every ``kedro``
    command once the extra is installed; settings.py)."""
    return "Add type hints to the `predict` method" not in record.getMessage()


def flat_params(value, prefix: str) -> dict[str, str]:
    """A parameter section as MLflow params: {"stage1.training.steps": "2000"}; lists and
    other leaves as their text, cut to MLflow's 6000 characters."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flat_params(item, f"{prefix}.{key}"))
        return flat
    return {re.sub(r"[^/\w.\- :]", "_", prefix): str(value)[:6000]}


def _active_mlflow():
    """The mlflow module when tracking is on and a run is open, else None."""
    if not enabled():
        return None
    try:
        import mlflow
    except ImportError:
        logger.warning(
            "VLV_MLFLOW is set but mlflow is not installed: "
            "pip install -c constraints.txt -e '.[mlflow]'"
        )
        return None
    return mlflow if mlflow.active_run() is not None else None


class MlflowMetricsHook:
    def __init__(self) -> None:
        self._catalog = None
        self._models: dict[str, str] = {}  # model directories this run saved: name -> path

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog
        self._models = {}

    @hook_impl(trylast=True)  # after kedro-mlflow's before_pipeline_run has opened the run
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        """The typed parameter sections the pipeline reads, flattened (kedro-mlflow flattens
        plain dicts itself, so the keys never meet)."""
        mlflow = _active_mlflow()
        if mlflow is None:
            return
        try:
            params: dict[str, str] = {}
            for name in sorted(pipeline.inputs()):
                if name.startswith("params:"):
                    value = catalog[name].load()
                    if hasattr(value, "model_dump"):
                        params.update(flat_params(value, name.removeprefix("params:")))
            if params:
                mlflow.log_params(params)
        except Exception as error:  # noqa: BLE001 - tracking must never break a run
            logger.warning("could not log the parameters to MLflow: %s", error)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if not enabled():
            return
        if dataset_name in METRIC_DATASETS and isinstance(data, dict):
            self._log_metrics(dataset_name, data)
        elif self._catalog is not None and callable(getattr(data, "save_pretrained", None)):
            from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
            from vlv_pipeline.hooks import saved_path

            dataset = self._catalog[dataset_name]
            if isinstance(dataset, ModelDirectoryDataset):
                self._models[dataset_name] = saved_path(dataset)

    @hook_impl(tryfirst=True)  # before kedro-mlflow's own after_pipeline_run ends the run
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from vlv_pipeline.distributed import rank

        models, self._models = self._models, {}
        if not models or rank() != 0 or not log_models():
            return
        mlflow = _active_mlflow()
        if mlflow is None:
            return
        for name, path in models.items():  # with their model cards, written after the model
            try:
                mlflow.log_artifacts(path, artifact_path=f"models/{name}")
            except Exception as error:  # noqa: BLE001 - tracking must never break a run
                logger.warning("could not log model directory %s to MLflow: %s", path, error)

    def _log_metrics(self, dataset_name: str, data: dict) -> None:
        mlflow = _active_mlflow()
        if mlflow is None:
            return
        try:
            mlflow.log_metrics(flatten(data, dataset_name))
        except Exception as error:  # noqa: BLE001 - tracking must never break a run
            logger.warning("could not log %s to MLflow: %s", dataset_name, error)
