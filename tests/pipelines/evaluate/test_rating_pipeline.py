"""Table 2's nodes as the evaluate pipeline runs them: conf/base's catalog entries (versioned
parquet, HTML and JSON under tmp_path), Kedro's SequentialRunner, outputs loaded back."""

import shutil
from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from rating_factory import WORLD, eval_set

from vlv_pipeline.metrics.rating_page import page_items
from vlv_pipeline.metrics.tables import PaperTable
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.rating import RatingParams
from vlv_pipeline.pipelines.evaluate import create_pipeline

ROOT = Path(__file__).resolve().parents[3]
NODES = [
    "sample_rating_items",
    "judge_rating_items",
    "write_rating_page",
    "read_user_ratings",
    "rating_table",
]


def _catalog(tmp: Path) -> DataCatalog:
    conf = tmp / "conf"
    (conf / "local").mkdir(parents=True)
    shutil.copytree(ROOT / "conf/base", conf / "base", ignore=shutil.ignore_patterns("param*"))
    (conf / "base/globals.yml").write_text(f"data: {tmp / 'data'}\nt2i: unused\n")
    loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")
    return DataCatalog.from_config(loader["catalog"], credentials=loader["credentials"])


def test_the_rating_nodes_run_on_the_projects_catalog(tmp_path):
    catalog = _catalog(tmp_path)
    data, captions = eval_set(10)
    captions["vlv"] = captions["vlv"].astype(object)
    captions.loc[2, "vlv"] = None  # a caption the captioner did not make
    catalog["eval_data"] = MemoryDataset(data, copy_mode="assign")
    catalog.save("eval_captions", captions)
    params = RatingParams(images=6)
    catalog["params:rating"] = MemoryDataset(params, copy_mode="assign")
    catalog["params:world"] = MemoryDataset(WORLD, copy_mode="assign")
    evaluate = EvaluateParams(render_t2i="t2i")
    catalog["params:evaluate"] = MemoryDataset(evaluate, copy_mode="assign")
    pipeline = create_pipeline().only_nodes(*NODES)
    assert pipeline.inputs() == {
        "eval_data",
        "eval_captions",
        "params:rating",
        "params:world",
        "params:evaluate",  # the rows' labels, as Tables 1 and 3 name them
        "rating_credentials",
    }
    SequentialRunner().run(pipeline, catalog)
    sample = catalog.load("rating_sample")
    assert sample["image_id"].nunique() == 6 and len(sample) == 6 * 4
    judged = catalog.load("rating_judgements")
    assert set(judged["status"]) <= {"rated", "missing"} and len(judged) == len(sample)
    page = catalog.load("rating_page")
    assert page.startswith("<!DOCTYPE html>") and page_items(sample, 0)[0].order_key in page
    assert catalog.load("rating_users").empty
    table = PaperTable.from_dict(catalog.load("eval_table2"))
    assert table.key == "table2" and table.row("VLV captioner").values["judge"] == 6.0
    assert table.row("reference captions (upper bound)").count["judge"] == 6
    versions = list((tmp_path / "data/08_reporting/eval_table2.json").iterdir())
    assert len(versions) == 1  # versioned, like every evaluate output
