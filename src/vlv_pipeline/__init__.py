"""vlv-pipeline: Kedro pipelines for the Vision-Language-Vision auto-encoder."""

__version__ = "0.1.0"
