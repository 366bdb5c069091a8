"""Stage 2's captioner and its baseline record what they were made for (issue 26, item 17)."""

import json

from stage2_factory import TINY_QWEN2, trained_captioners

from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.models.provenance import RECORD
from vlv_pipeline.models.provenance_fingerprints import t2i_fingerprint


def test_the_captioners_record_the_t2i_encoder_sizes_and_llm(tiny_world, tiny_sd, tmp_path):
    encoder, captioner, baseline, *_ = trained_captioners(tiny_world, tiny_sd, tmp_path)
    fingerprint = t2i_fingerprint(tiny_sd)["fingerprint"]
    for model, name in ((captioner, "vlv_captioner"), (baseline, "baseline_captioner")):
        record = model.provenance
        assert (record["model"], record["made_by"]) == (name, "stage2")
        assert (record["t2i"], record["t2i_fingerprint"]) == (str(tiny_sd), fingerprint)
        assert record["embedding_width"] == 16 and record["encoder"] == "small"
        assert record["llm"] == "a qwen2 LLM built from a config" and record["llm_fingerprint"]
    assert captioner.provenance["num_queries"] == 4 and captioner.provenance["resolution"] == 16
    assert captioner.provenance["llm_fingerprint"] == baseline.provenance["llm_fingerprint"]
    dataset = ModelDirectoryDataset(
        filepath=str(tmp_path / "vlv_captioner"),
        load_class="vlv_pipeline.models.captioner.VLVCaptioner",
    )
    dataset.save(captioner)
    assert json.loads((tmp_path / "vlv_captioner" / RECORD).read_text()) == captioner.provenance
    assert dataset.load().provenance == captioner.provenance
    assert TINY_QWEN2["model_type"] == "qwen2"
