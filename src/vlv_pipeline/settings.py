"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import logging
import os
import warnings

# Nothing in the default environment may reach a model hub or phone home. MLflow (the
# `mlflow` extra) reports usage on import unless told not to; with kedro-mlflow installed,
# `kedro` imports mlflow for its CLI commands right after reading these settings.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Secrets are masked in every log record, on every handler (masking.py; the console and
# info.log of conf/logging.yml, or the handlers of your own KEDRO_LOGGING_CONFIG).
from vlv_pipeline.masking import install_log_masking  # noqa: E402

install_log_masking()
# Kedro 1.7's own config loader calls OmegaConf's deprecated register_new_resolver: four
# warnings of a dozen lines each on every run, that no user can act on.
warnings.filterwarnings(
    "ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning
)

from vlv_pipeline.config import StudyConfigLoader  # noqa: E402

# Kedro's OmegaConfigLoader; `parameters` also get the study's derived points (params/study.py)
CONFIG_LOADER_CLASS = StudyConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # `conf/paper` overrides only the parameter keys it names; the rest comes from base.
    "merge_strategy": {"parameters": "soft"},
}

from vlv_pipeline.distributed import QuietRanksHook, RankAwareDataCatalog, rank  # noqa: E402
from vlv_pipeline.hooks import AnnounceOutputsHook  # noqa: E402
from vlv_pipeline.preflight import PreflightHook  # noqa: E402
from vlv_pipeline.tracking import MlflowMetricsHook, enabled, no_predict_hint  # noqa: E402

# kedro-mlflow's CLI commands (loaded by every `kedro` command once the `mlflow` extra is
# installed, tracking on or off) define a pyfunc model whose `predict` has no type hints:
# mlflow warns about it on every command, about a feature this project does not use. mlflow
# raises it under its own "once" filter, so it is dropped where Kedro logs warnings.
logging.getLogger("py.warnings").addFilter(no_predict_hint)

# PreflightHook: before any node runs, every missing component in one message (docs/PAPER.md, Before a paper run).
HOOKS = (AnnounceOutputsHook(), QuietRanksHook(), MlflowMetricsHook(), PreflightHook())

# MLflow tracking (the optional `mlflow` extra) only when switched on with VLV_MLFLOW=1:
# kedro-mlflow registers its hooks on install, so they are disabled unless asked for. Under
# `accelerate launch` every rank runs the session: rank 0 alone opens the launch's one run.
DISABLE_HOOKS_FOR_PLUGINS = () if enabled() and rank() == 0 else ("kedro-mlflow", "kedro_mlflow")

# Under `accelerate launch`, outputs are persisted by rank 0 only (docs/SCALE_OUT.md).
DATA_CATALOG_CLASS = RankAwareDataCatalog
