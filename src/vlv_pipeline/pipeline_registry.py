"""Project pipelines."""

import importlib
import pkgutil

from kedro.pipeline import Pipeline

# The full chain, in the order `__default__` runs it. Pipelines not listed here
# (e.g. `teacher`, `caption`) are registered but run only when named.
DEFAULT_CHAIN = ("world", "ingest", "cache", "stage1", "synthesize", "stage2", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    pipelines = _every_pipeline()
    default = Pipeline([])
    for name in DEFAULT_CHAIN:
        if name in pipelines:
            default += pipelines[name]
    pipelines["__default__"] = default
    # The VLV recipe on whatever `raw_images` is: what conf/paper users run.
    pipelines["vlv"] = default - pipelines["world"] if "world" in pipelines else default
    return pipelines


def _every_pipeline() -> dict[str, Pipeline]:
    """Each ``pipelines/<name>`` package's ``create_pipeline()``, always all of them.

    Kedro's ``find_pipelines`` imports only the pipelines the command line names, assuming
    one package per name; ``vlv`` and ``__default__`` are composed from several, so
    ``kedro run --pipeline vlv`` needs every package.
    """
    package = importlib.import_module("vlv_pipeline.pipelines")
    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            pipeline = module.create_pipeline()
            if not isinstance(pipeline, Pipeline):
                raise TypeError(f"{module.__name__}.create_pipeline() did not return a Pipeline")
            found[info.name] = pipeline
    return found
