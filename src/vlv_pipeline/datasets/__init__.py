"""Custom Kedro datasets (model directories, tensor shards)."""

from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset

__all__ = ["ModelDirectoryDataset"]
