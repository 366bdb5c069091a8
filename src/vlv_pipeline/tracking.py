"""Optional experiment tracking with MLflow, through kedro-mlflow.

Off unless BOTH are true: the extra is installed (``pip install -e ".[mlflow]"``) and
``VLV_MLFLOW=1`` is set. settings.py disables kedro-mlflow's hooks otherwise, so installing
the extra alone changes nothing, and a run without it never imports mlflow.

When on, kedro-mlflow opens one MLflow run per ``kedro run`` and logs the parameters
(conf/base/mlflow.yml: a local sqlite store, ``mlflow.db``), and ``MlflowMetricsHook``
logs every number of the stage metrics and the evaluation metrics as they are saved.
"""

from __future__ import annotations

import logging
import os

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

METRIC_DATASETS = ("stage1_metrics", "stage2_metrics", "eval_metrics", "teacher_metrics")


def enabled() -> bool:
    return os.environ.get("VLV_MLFLOW", "").lower() in {"1", "true", "yes", "on"}


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


class MlflowMetricsHook:
    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if dataset_name not in METRIC_DATASETS or not enabled() or not isinstance(data, dict):
            return
        try:
            import mlflow
        except ImportError:
            logger.warning(
                "VLV_MLFLOW is set but mlflow is not installed: pip install -e '.[mlflow]'"
            )
            return
        if mlflow.active_run() is None:
            return
        try:
            mlflow.log_metrics(flatten(data, dataset_name))
        except Exception as error:  # noqa: BLE001 - tracking must never break a run
            logger.warning("could not log %s to MLflow: %s", dataset_name, error)
