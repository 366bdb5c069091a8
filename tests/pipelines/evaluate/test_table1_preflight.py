"""The preflight knows what the evaluation set and Table 1's rows need: COCO's files, the
published captioner, an API key, a caption file, a local model; optional rows go unchecked."""

from __future__ import annotations

from kedro.io import DataCatalog, Version
from kedro.pipeline import Node, Pipeline

from vlv_pipeline.datasets.credentials import CredentialsDataset
from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.preflight import Producers, check_datasets
from vlv_pipeline.preflight import check_parameters as check_models


def _f(*args):  # a node function; never called
    return None


def check_parameters(blocks, **kwargs):
    """``check_parameters`` on the models built from these raw blocks, as the hook builds them."""
    models = {name: EvaluateParams.model_validate(value) for name, value in blocks.items()}
    return check_models(models, **kwargs)


def _evaluate(tmp_path, **kw) -> dict:
    return {
        "render_t2i": ".",
        "resolution": 384,  # as source coco needs
        "source": "split",
        "coco": {
            "annotations": str(tmp_path / "coco/annotations/captions_val2014.json"),
            "images": str(tmp_path / "coco/val2014"),
        },
        "captioners": [{"kind": "trained"}, {"kind": "reference"}],
        **kw,
    }


def _lines(findings) -> list[str]:
    return [f.line() for f in findings]


def test_a_coco_set_needs_both_files_of_the_download(tmp_path):
    assert check_parameters({"evaluate": _evaluate(tmp_path)}) == []
    lines = _lines(check_parameters({"evaluate": _evaluate(tmp_path, source="coco")}))
    assert len(lines) == 2
    assert lines[0].startswith(f"evaluate.coco.annotations = {tmp_path}/coco/annotations")
    assert "not there -> download COCO 2014 val" in lines[0] and "val2014.zip" in lines[0]
    assert lines[1].startswith("evaluate.coco.images")
    (tmp_path / "coco/val2014").mkdir(parents=True)
    (tmp_path / "coco/annotations").mkdir()
    (tmp_path / "coco/annotations/captions_val2014.json").write_text("{}")
    assert check_parameters({"evaluate": _evaluate(tmp_path, source="coco")}) == []


def test_rows_name_what_they_need_unless_optional(tmp_path):
    remote = {"base_url": "https://api.openai.com/v1", "model": "gpt-4o"}
    rows = [
        {"kind": "openai", "name": "gpt4o", "openai": remote},
        {
            "kind": "openai",
            "name": "local",
            "openai": {**remote, "base_url": "http://127.0.0.1:8000/v1"},
        },
        {"kind": "file", "name": "mine", "path": str(tmp_path / "user_captions.json")},
        {"kind": "transformers", "name": "florence", "transformers": {"pretrained": "models/none"}},
        {"kind": "file", "name": "maybe", "path": str(tmp_path / "x.json"), "optional": True},
        {"kind": "openai", "name": "spare", "openai": remote, "optional": True},
    ]
    evaluate = _evaluate(tmp_path, captioners=rows)
    lines = _lines(check_parameters({"evaluate": evaluate}, credentials=[{}, {}]))
    assert lines[0].startswith("evaluate.captioners[3].transformers.pretrained = models/none")
    assert lines[1] == (
        "evaluate.captioners[0] (openai gpt4o, https://api.openai.com/v1): no api_key in the "
        "credentials -> add `eval_captioners: {gpt4o: {api_key: ...}}` (or `captioner: "
        "{api_key: ...}`) to conf/local/credentials.yml, or mark the row `optional: true`"
    )
    assert lines[2].startswith(f"evaluate.captioners[2].path = {tmp_path}/user_captions.json")
    assert "kedro run --pipeline caption" in lines[2]
    assert len(lines) == 3  # the loopback server and the optional rows: nothing needed
    keyed = [{}, {"gpt4o": {"api_key": "sk-x"}}]
    assert len(check_parameters({"evaluate": evaluate}, credentials=keyed)) == 2
    # a study's slice reads the evaluation set, never its rows
    assert check_parameters({"study_points.shared.evaluate": evaluate}, credentials=[{}]) == []


def _catalog(tmp_path) -> DataCatalog:
    def model(name):
        return ModelDirectoryDataset(
            filepath=str(tmp_path / "data" / name),
            load_class="vlv_pipeline.models.captioner.VLVCaptioner",
            version=Version(None, None),
            lazy=True,
        )

    return DataCatalog(
        datasets={
            "published_captioner": model("published_captioner"),
            "eval_published_captioner": model("published_captioner"),
            "eval_captioner_credentials": CredentialsDataset(credentials={}),
        }
    )


def test_the_published_captioner_is_needed_only_for_a_required_published_row(tmp_path):
    catalog = _catalog(tmp_path)
    registry = {
        "import_published": Pipeline(
            [Node(_f, "params:import_published", "published_captioner", name="imp")]
        )
    }
    evaluate = Pipeline(
        [
            Node(
                _f,
                ["eval_published_captioner", "eval_captioner_credentials", "params:evaluate"],
                "eval_captions",
                name="caption_eval_images",
            )
        ]
    )
    producers = Producers(registry, catalog)

    def found(rows):
        blocks = {"evaluate": _evaluate(tmp_path, captioners=rows)}
        return _lines(check_datasets(evaluate, catalog, producers, "paper", blocks))

    assert found([{"kind": "trained"}]) == []
    assert found([{"kind": "published", "optional": True}]) == []
    (line,) = found([{"kind": "trained"}, {"kind": "published"}])
    assert line == (
        f"eval_published_captioner ({tmp_path}/data/published_captioner): no saved version -> "
        "`kedro run --env paper --pipeline import_published`"
    )
