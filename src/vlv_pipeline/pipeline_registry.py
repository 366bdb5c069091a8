"""Project pipelines."""

import importlib
import pkgutil

from kedro.pipeline import Pipeline

# The full chain, in the order `__default__` runs it. Pipelines not listed here
# (e.g. `teacher`, `caption`) are registered but run only when named.
DEFAULT_CHAIN = ("world", "ingest", "cache", "stage1", "synthesize", "stage2", "evaluate")
# Pipelines composed from the others (their create_pipeline takes the registered pipelines),
# so that their package imports no other pipeline: the study reruns slices of the chain.
COMPOSED = ("study",)


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
    found: dict[str, Pipeline] = {}
    names = sorted(i.name for i in pkgutil.iter_modules(package.__path__) if i.ispkg)
    for name in [n for n in names if n not in COMPOSED] + [n for n in names if n in COMPOSED]:
        module = importlib.import_module(f"{package.__name__}.{name}")
        kwargs = {"pipelines": dict(found)} if name in COMPOSED else {}
        pipeline = module.create_pipeline(**kwargs)
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"{module.__name__}.create_pipeline() did not return a Pipeline")
        found[name] = pipeline
    return found
