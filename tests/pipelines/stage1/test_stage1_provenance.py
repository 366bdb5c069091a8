"""Stage 1's encoder records what it was made for, in its directory (issue 26, item 17)."""

import json

from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.models.provenance import RECORD
from vlv_pipeline.models.provenance_fingerprints import t2i_fingerprint
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.stage1.nodes import train_stage1


def test_the_trained_encoder_records_its_setting_and_the_directory_keeps_it(
    tiny_sd, data, tmp_path
):
    params = Stage1Params(
        encoder={
            "backbone": "small",
            "num_queries": 4,
            "small": {"width": 16, "stem_channels": [8, 16], "heads": 2, "image_size": 16},
        },
        training={"steps": 1, "batch_size": 4, "learning_rate": 1e-3},
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    encoder, _ = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    record = encoder.provenance
    assert (record["model"], record["made_by"]) == ("vlv_encoder", "stage1")
    assert record["t2i"] == str(tiny_sd)
    assert record["t2i_fingerprint"] == t2i_fingerprint(tiny_sd)["fingerprint"] is not None
    assert record["t2i_parts"] == t2i_fingerprint(tiny_sd)["parts"]
    assert (record["encoder"], record["resolution"]) == ("small", 16)
    assert (record["num_queries"], record["embedding_width"]) == (4, 16)
    assert "llm" not in record  # an encoder has none
    dataset = ModelDirectoryDataset(
        filepath=str(tmp_path / "vlv_encoder"),
        load_class="vlv_pipeline.models.vlv_encoder.VLVEncoder",
    )
    dataset.save(encoder)
    assert json.loads((tmp_path / "vlv_encoder" / RECORD).read_text()) == record
    assert dataset.load().provenance == record
