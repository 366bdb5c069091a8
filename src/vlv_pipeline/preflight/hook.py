"""The hook: before any node runs, the T2I agreement, the unread ``--params``, and every
missing component (``check``) in one message (the package's docstring)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from kedro.framework.hooks import hook_impl

from vlv_pipeline.distributed import rank, world_size
from vlv_pipeline.preflight.datasets import check_datasets, written_locations
from vlv_pipeline.preflight.findings import (
    Finding,
    MissingComponentsError,
    Producers,
    dataset_in,
    every_rank,
    hub_offline,
    message,
    run_command,
)
from vlv_pipeline.preflight.parameters import build_models, check_parameters, parameter_models
from vlv_pipeline.preflight.provenance import attach_provenance_checks, check_provenance

logger = logging.getLogger("vlv_pipeline.preflight")

# --------------------------------------------------------------------------- the check


def check(
    pipeline: Any,
    catalog: Any,
    registry: Mapping[str, Any],
    env: str | None,
    provenance: Mapping[str, tuple[Any, Any]] | None = None,
) -> list[Finding]:
    """Every finding for running ``pipeline`` with ``catalog`` (nothing found: []).
    ``provenance``: the model directories' checks (``attach_provenance_checks``), when built.
    The parameter checks ask each block's model (its nodes' annotation) what it needs; a
    block with no model, or one that does not validate (Kedro says so), is not asked."""
    from vlv_pipeline.datasets.credentials import CredentialsDataset

    producers = Producers(registry, catalog)
    inputs = pipeline.inputs()
    blocks = {}
    for name in sorted(i for i in inputs if i.startswith("params:")):
        dataset = dataset_in(catalog, name)
        if dataset is not None:
            blocks[name.removeprefix("params:")] = dataset.load()
    findings = check_datasets(pipeline, catalog, producers, env, blocks)
    credentials = {  # by catalog entry: each key is looked for where its node reads it
        name: ds.load()
        for name in sorted(inputs)
        if isinstance(ds := dataset_in(catalog, name), CredentialsDataset)
    }
    written = written_locations(pipeline, catalog)
    models = build_models(blocks, parameter_models(pipeline))
    findings += check_parameters(models, producers, env, written, credentials or None)
    findings += check_provenance(pipeline, catalog, producers, env, blocks, provenance)
    return findings


def unread_params(
    runtime_params: Mapping[str, Any], inputs: Iterable[str], resolver_keys: Iterable[str]
) -> list[str]:
    """The top-level ``--params`` keys no node of the run reads: not ``params:<key>`` (or
    below it), not ``parameters``, not a key conf reads through ``${runtime_params:...}``.
    A study point's blocks derive from every section, so a run that reads one reads all."""
    inputs = set(inputs)
    if "parameters" in inputs or any(i.startswith("params:study_points.") for i in inputs):
        return []
    read = {i.removeprefix("params:").split(".")[0] for i in inputs if i.startswith("params:")}
    return [k for k in runtime_params if k not in read and k not in set(resolver_keys)]


def _warn_unread(run_params: Mapping[str, Any], pipeline: Any, loader: Any) -> None:
    runtime = run_params.get("runtime_params") or {}
    if not runtime or rank() != 0:
        return
    keys = loader.conf_keys()[1] if hasattr(loader, "conf_keys") else set()
    for key in unread_params(runtime, pipeline.inputs(), keys):
        names = run_params.get("pipeline_names") or ["__default__"]
        logger.warning(
            "--params %s has no effect on this run: no node of %s reads params:%s",
            key,
            ", ".join(names),
            key,
        )


class PreflightHook:
    """Checks, before any node runs, every component the run needs (module docstring)."""

    def __init__(self, registry: Mapping[str, Any] | None = None) -> None:
        self._registry = registry
        self._loader = None

    @hook_impl
    def after_context_created(self, context) -> None:
        from vlv_pipeline.masking import install_log_masking

        install_log_masking()  # on whatever handlers logging has now
        self._loader = context.config_loader

    @hook_impl(tryfirst=True)  # before plugins' hooks start anything (an MLflow run)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        _warn_unread(run_params, pipeline, self._loader)
        registry = self._registry
        if registry is None:
            from kedro.framework.project import pipelines

            registry = pipelines
        env = run_params.get("env")
        # the loaders refuse a model made for another setting, even with the check off; the
        # check below runs the same ones (built once: each reads the T2I's configs)
        provenance = attach_provenance_checks(pipeline, catalog, registry, env)
        if os.environ.get("VLV_SKIP_PREFLIGHT", "").lower() in {"1", "true", "yes", "on"}:
            return
        names = run_params.get("pipeline_names") or []
        command = run_command(env, ",".join(names) if names else None)
        if len(names) > 1:
            command = command.replace("--pipeline ", "--pipelines ")
        findings = every_rank(check(pipeline, catalog, registry, env, provenance))
        offline = hub_offline()
        stopping = [f for f in findings if offline or not f.download]
        if rank() == 0:
            for finding in findings:
                if finding not in stopping:
                    logger.info("will download: %s (%s)", finding.what, finding.fix.strip("`"))
        if stopping:
            error = MissingComponentsError(message(stopping, command, offline), stopping)
            if world_size() > 1:
                # rank 0 says it before any rank exits: a launcher stops the others at the
                # first exit, maybe before rank 0 could print
                error.show()
                from vlv_pipeline.distributed import barrier

                barrier()
            raise error
