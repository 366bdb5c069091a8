"""The ingest pipeline through Kedro's runner; the catalog and parameter wiring."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro.validation.parameter_validator import ParameterValidator

from vlv_pipeline.datasets.image_source import ImageSourceDataset
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.pipelines.ingest import create_pipeline

CONF = Path(__file__).resolve().parents[3] / "conf" / "base"


def test_pipeline_shape():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {"raw_images", "params:ingest"}
    assert pipeline.outputs() == {"image_manifest", "ingest_rejects"}


def test_runs_through_the_sequential_runner(shapes_like):
    catalog = DataCatalog(
        {
            "raw_images": ImageSourceDataset(
                kind="folder",
                path=str(shapes_like / "images"),
                captions=str(shapes_like / "labels.parquet"),
            ),
            "params:ingest": MemoryDataset(IngestParams(min_side=8)),
            "image_manifest": MemoryDataset(),
            "ingest_rejects": MemoryDataset(),
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    manifest = catalog.load("image_manifest")
    rejects = catalog.load("ingest_rejects")
    assert len(manifest) == 4 and manifest["caption"].notna().all()
    assert sorted(rejects["reason"]) == ["duplicate", "empty_file", "too_small"]


def test_catalog_file_reads_the_shapes_world_and_versions_outputs(shapes_like, tmp_path):
    config = yaml.safe_load((CONF / "catalog_ingest.yml").read_text())
    assert config["raw_images"] == {
        "type": "vlv_pipeline.datasets.image_source.ImageSourceDataset",
        "kind": "folder",
        "path": "${globals:data}/01_raw/shapes/images",  # conf/base/globals.yml: data
        "captions": "${globals:data}/01_raw/shapes/labels.parquet",
        "writable": True,
    }
    assert config["image_manifest"]["versioned"] is config["ingest_rejects"]["versioned"] is True
    # the same entries, relocated under tmp_path (as Kedro does for the project root)
    config["raw_images"]["path"] = str(shapes_like / "images")
    config["raw_images"]["captions"] = str(shapes_like / "labels.parquet")
    for name in ("image_manifest", "ingest_rejects"):
        config[name]["filepath"] = str(tmp_path / "02_intermediate" / f"{name}.parquet")
    catalog = DataCatalog.from_config(config)
    catalog["params:ingest"] = IngestParams(min_side=8)
    SequentialRunner().run(create_pipeline(), catalog)
    (version_dir,) = (tmp_path / "02_intermediate" / "image_manifest.parquet").iterdir()
    saved = pd.read_parquet(version_dir / "image_manifest.parquet")
    assert len(saved) == 4 and list(saved.columns)[:2] == ["image_id", "source"]
    assert len(catalog.load("ingest_rejects")) == 3


def test_kedro_builds_ingest_params_from_the_parameters_file():
    raw = yaml.safe_load((CONF / "parameters_ingest.yml").read_text())
    validated = ParameterValidator({"ingest": create_pipeline()}).validate_raw_params(raw)
    assert isinstance(validated["ingest"], IngestParams)
    raw["ingest"]["resolutoin"] = 384
    with pytest.raises(Exception, match="resolutoin"):
        ParameterValidator({"ingest": create_pipeline()}).validate_raw_params(raw)
