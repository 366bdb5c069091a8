"""A tiny trained project for the demo page's tests: conf/base with its data root and T2I
model in a temporary folder, a stage-1 encoder and the captioner trained from it (two steps)
saved where the default run saves them, and a shapes-world image."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_TESTS = Path(__file__).resolve().parent / "pipelines"
if str(PIPELINE_TESTS) not in sys.path:
    sys.path.insert(0, str(PIPELINE_TESTS))


def _build_tiny_sd():
    """``build_tiny_sd`` of the pipeline tests' conftest (imported under its own name)."""
    spec = importlib.util.spec_from_file_location(
        "_pipeline_tests_conftest", PIPELINE_TESTS / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_sd


@dataclass
class DemoProject:
    conf: Path  # a conf folder: conf/base, and conf/local/globals.yml naming the data and T2I
    data: Path
    t2i: Path
    image: Path  # a shapes-world test image (16 px PNG)
    encoder: object
    captioner: object


def tiny_demo_project(root: Path) -> DemoProject:
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog
    from stage2_factory import stage2_inputs
    from world_factory import render_and_ingest

    from vlv_pipeline.params.t2i import T2IParams
    from vlv_pipeline.params.world import WorldParams
    from vlv_pipeline.pipelines.stage2 import nodes as stage2_nodes

    root.mkdir(parents=True, exist_ok=True)
    sd = _build_tiny_sd()(root / "sd")
    (root / "world").mkdir()
    world = WorldParams(image_size=16, counts={"train": 16, "val": 0, "test": 6})
    tiny_world = render_and_ingest(root / "world", world)
    (root / "stage2").mkdir()
    params, data, encoder, cache = stage2_inputs(tiny_world, sd, root / "stage2")
    captioner, _ = stage2_nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(sd)))

    conf = root / "conf"
    shutil.copytree(ROOT / "conf/base", conf / "base")
    (conf / "local").mkdir()
    (conf / "local/globals.yml").write_text(f"data: {root / 'data'}\nt2i: {sd}\n")
    loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")
    catalog = DataCatalog.from_config(loader["catalog"], credentials=loader["credentials"])
    catalog.save("vlv_encoder", encoder)
    catalog.save("vlv_captioner", captioner)

    source, manifest = tiny_world
    first = manifest[manifest["split"] == "test"].sort_values("image_id")["source"].iloc[0]
    image = root / "shape.png"
    shutil.copy(Path(source.path) / first, image)
    return DemoProject(conf, root / "data", sd, image, encoder, captioner)
