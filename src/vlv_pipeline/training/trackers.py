"""What a training run reports while it trains, through Accelerate's trackers.

Every ``log_every`` steps: ``loss``, ``lr``, ``grad_norm`` (before clipping) and
``images_per_s`` (all ranks together); every ``validation.every`` steps, the stage's
validation metric and its image grid.

- ``tensorboard`` (the default, offline): event files under ``<run folder>/logs/<stage>``.
  Watch every run at once with ``tensorboard --logdir data/06_models/checkpoints`` (conf/paper:
  ``data/paper/06_models/checkpoints``; each environment has its own data root).
- ``wandb`` (Weights & Biases, as the official code logs; ``pip install -c constraints.txt
  wandb``): the W&B project is the stage (``stage1``), the run is named after the run folder,
  and its files go under ``<run folder>/logs/wandb`` unless ``WANDB_DIR`` says elsewhere.
  ``wandb login`` first, or ``WANDB_MODE=offline`` (``wandb sync`` uploads later).
- MLflow, when the tracking extra is on (``VLV_MLFLOW=1``, see ``vlv_pipeline.tracking``)
  and kedro-mlflow has opened a run: the same numbers go into that run, prefixed with the
  stage (``stage1/loss``), so one MLflow run holds the parameters, the training curves and
  the evaluation metrics of a ``kedro run``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
from accelerate.tracking import GeneralTracker, on_main_process

from vlv_pipeline import tracking
from vlv_pipeline.errors import SetupError

logger = logging.getLogger(__name__)


class ActiveMlflowRun(GeneralTracker):
    """Logs into the MLflow run that is already open (kedro-mlflow's), never a new one."""

    name = "mlflow_active_run"
    requires_logging_directory = False

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    @property
    def tracker(self):
        import mlflow

        return mlflow.active_run()

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        import mlflow

        numbers = {
            f"{self.prefix}/{k}": float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        try:
            mlflow.log_metrics(numbers, step=step)
        except Exception as error:  # noqa: BLE001 - tracking must never break a run
            logger.warning("could not log training metrics to MLflow: %s", error)

    @on_main_process
    def log_images(self, values: dict, step: int | None = None, **kwargs) -> None:
        import mlflow

        for key, image in values.items():
            try:
                mlflow.log_image(np.asarray(image), key=f"{self.prefix}/{key}", step=step)
            except Exception as error:  # noqa: BLE001
                logger.warning("could not log %s to MLflow: %s", key, error)


def make_trackers(names: list[str], prefix: str) -> list:
    """The ``log_with`` list for an Accelerator: the named built-ins, plus the open MLflow
    run when tracking is on. A named tracker that is not installed is an error here
    (Accelerate would drop it without a word)."""
    chosen: list = list(names)
    if "wandb" in chosen and importlib.util.find_spec("wandb") is None:
        raise SetupError(
            "training.trackers names wandb, but wandb is not installed: "
            "pip install -c constraints.txt wandb (the version constraints.txt pins), or take "
            "wandb out of training.trackers (the default is [tensorboard])"
        )
    if tracking.enabled():
        try:
            import mlflow
        except ImportError:
            mlflow = None
        if mlflow is not None and mlflow.active_run() is not None:
            chosen.append(ActiveMlflowRun(prefix))
    return chosen


def init_kwargs(names: list[str], logging_dir: Path, run_name: str) -> dict:
    """Accelerate's ``init_kwargs`` for the named trackers: a W&B run named after the run
    folder, its files under ``logging_dir`` unless ``WANDB_DIR`` is set."""
    if "wandb" not in names:
        return {}
    options: dict = {"name": run_name}
    if not os.environ.get("WANDB_DIR"):
        Path(logging_dir).mkdir(parents=True, exist_ok=True)
        options["dir"] = str(logging_dir)
    return {"wandb": options}


def plain_config(values: dict) -> dict:
    """Hyperparameters as TensorBoard takes them: numbers, strings and booleans only."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def figure_array(figure) -> np.ndarray:
    """A matplotlib figure as an (H, W, 3) uint8 array (the figure is closed)."""
    import matplotlib.pyplot as plt

    figure.canvas.draw()
    array = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return array


def log_images(accelerator, images: dict[str, np.ndarray], step: int) -> None:
    """Log HWC uint8 images to every tracker that takes images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images(images, step=step, dataformats="HWC")
        elif tracker.name == "wandb":  # Accelerate's W&B tracker takes a list per key
            tracker.log_images({key: [image] for key, image in images.items()}, step=step)
        elif hasattr(tracker, "log_images"):
            tracker.log_images(images, step=step)
