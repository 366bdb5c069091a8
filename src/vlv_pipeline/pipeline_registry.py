"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The full chain, in the order `__default__` runs it. Pipelines not listed here
# (e.g. `teacher`, `caption`) are registered but run only when named.
DEFAULT_CHAIN = ("world", "ingest", "cache", "stage1", "synthesize", "stage2", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    pipelines = find_pipelines(raise_errors=True)
    default = Pipeline([])
    for name in DEFAULT_CHAIN:
        if name in pipelines:
            default += pipelines[name]
    pipelines["__default__"] = default
    # The VLV recipe on whatever `raw_images` is: what conf/paper users run.
    pipelines["vlv"] = default - pipelines["world"] if "world" in pipelines else default
    return pipelines
