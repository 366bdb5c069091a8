"""Tables 1, 2 and 3 name each captioner alike: the label of its row of evaluate.captioners
(the project's kinds have their own, a COCO set's own captions are "COCO captions"), the
trained captioner's row first and bold (kind model) in every table."""

from __future__ import annotations

import pandas as pd

from vlv_pipeline.metrics.tables import PaperTable, table_markdown
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.rating import RatingParams
from vlv_pipeline.params.rerender import RerenderParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.params.vqa import VQAParams
from vlv_pipeline.pipelines.evaluate import rating, rerender, vqa
from vlv_pipeline.pipelines.evaluate.nodes import captioner_label

COLUMNS = ["without_stage1", "vlv", "gpt4o", "chance"]  # eval_captions' order


def _evaluate(source: str = "coco") -> EvaluateParams:
    return EvaluateParams(
        render_t2i="t2i",
        source=source,
        resolution=16,
        captioners=[  # the trained captioner is not listed first
            {"kind": "baseline"},
            {"kind": "trained", "label": "VLV (ours)"},
            {"kind": "reference"},
            {"kind": "file", "name": "gpt4o", "path": "gpt4o.json", "label": "GPT-4o"},
            {"kind": "chance"},
        ],
    )


def _captions() -> pd.DataFrame:
    ids = ["1", "2", "3"]
    table = pd.DataFrame({"image_id": ids, "reference": [f"a photo {i}" for i in ids]})
    for column in COLUMNS:
        table[column] = [f"{column} says {i}" for i in ids]
    return table


def _table1(evaluate: EvaluateParams) -> PaperTable:
    sweep = RerenderParams(guidance=[1.0], steps=2, images=None)
    rows = rerender._rows(_captions(), evaluate)
    table = rerender._table(
        rows, {}, ("mse", "pixel MSE"), evaluate, sweep, 3, 3, {}, T2IParams(model="t2i"), True
    )
    return PaperTable.from_dict(table.to_dict())


def _table2(evaluate: EvaluateParams) -> PaperTable:
    captions = _captions()
    sample = pd.DataFrame(
        [
            (image_id, index, column, captions.loc[index, column])
            for index, image_id in enumerate(captions["image_id"])
            for column in ["reference", *COLUMNS]
        ],
        columns=rating.SAMPLE_COLUMNS,
    )
    users = pd.DataFrame(
        [(r.image_id, r.captioner, 4.0, "ann") for r in sample.itertuples()],
        columns=rating.USER_COLUMNS,
    )
    judged = pd.DataFrame(columns=rating.JUDGEMENT_COLUMNS)
    params = RatingParams(judge="none", ratings=["ratings.json"])
    return PaperTable.from_dict(rating.rating_table(sample, judged, users, params, evaluate))


def _table3(evaluate: EvaluateParams) -> PaperTable:
    answers = pd.DataFrame(
        [
            ("shapes", f"{i}-colour", str(i), "colour", column, 0, "red", 1.0, "answered")
            for i in (1, 2, 3)
            for column in [*COLUMNS, "reference"]
        ],
        columns=vqa.ANSWER_COLUMNS,
    )
    table = vqa.vqa_table(answers, {"seed": 0}, VQAParams(bootstrap_resamples=10), evaluate)
    return PaperTable.from_dict(table)


def test_the_three_tables_name_every_captioner_alike():
    evaluate = _evaluate()
    tables = [_table1(evaluate), _table2(evaluate), _table3(evaluate)]
    expected = {
        ("VLV (ours)", "model"),
        ('"without stage 1"', "baseline"),
        ("GPT-4o", "baseline"),
        ("chance (another image's reference caption)", "baseline"),
        ("COCO captions", "reference"),
    }
    for table in tables:
        run = [(r.label, r.kind) for r in table.rows if r.kind != "paper"]
        assert set(run) == expected, table.key
        assert run[0] == ("VLV (ours)", "model"), table.key  # the model's row first
        assert "| **VLV (ours)** |" in table_markdown(table)  # and bold


def test_labels_without_a_row_and_outside_coco():
    split = _evaluate("split")
    assert captioner_label("reference", split) == ("reference captions (upper bound)", "reference")
    assert captioner_label("vlv", split) == ("VLV (ours)", "model")
    assert captioner_label("somebody", split) == ("somebody", "baseline")  # no row names it
    # a fixed column no row lists keeps its kind's label; None: the default rows
    bare = EvaluateParams(render_t2i="t", captioners=[{"kind": "trained"}])
    assert captioner_label("chance", bare)[0] == "chance (another image's reference caption)"
    assert captioner_label("vlv") == ("VLV captioner", "model")
    assert captioner_label("published")[0] == "VLV (published captioner)"
