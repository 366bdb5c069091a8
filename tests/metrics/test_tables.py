"""The paper tables' one shape: a round trip through JSON and the two renderings."""

import json

import pytest

from vlv_pipeline.metrics.tables import PaperTable, Row, table_html, table_markdown


def _table() -> PaperTable:
    return PaperTable(
        key="table2",
        title="Table 2: rated captions",
        columns=[("judge", "VLM judge"), ("users", "users")],
        rows=[
            Row(
                "VLV",
                {"judge": 5.1234, "users": None},
                "model",
                {"judge": (5.0, 5.25)},
                {"judge": 200},
            ),
            Row("chance", {"judge": 0.5, "users": 0.25}),
            Row("VLV", {"judge": 5.18, "users": 5.17}, "paper"),
        ],
        notes=["the judge is exact, not a VLM"],
    )


def test_a_table_survives_json():
    table = _table()
    again = PaperTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table
    assert again.row("chance").values["users"] == 0.25
    with pytest.raises(KeyError, match="no row 'nobody'"):
        again.row("nobody")


def test_markdown_marks_the_model_the_paper_and_the_intervals():
    text = table_markdown(_table())
    assert "| **VLV** | 5.12 [5.00, 5.25] | - |" in text
    assert "| VLV (paper) | 5.18 | 5.17 |" in text
    assert text.rstrip().endswith("- the judge is exact, not a VLM")


def test_html_escapes_and_classes_rows_by_kind():
    table = _table()
    table.rows[1].label = "<chance>"
    page = table_html(table)
    assert '<tr class="model"><td>VLV</td>' in page
    assert '<tr class="paper"><td>VLV (paper)</td>' in page
    assert "&lt;chance&gt;" in page and "<chance>" not in page
    assert "higher is better" in page
