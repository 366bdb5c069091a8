"""The imported published captioner records the paper's setting (issue 26, item 17): the
T2I whose text encoder it carries (import_published.text_encoder), Florence-2, the crop it
captions at, its queries and width (from the checkpoint) and its LLM."""

from test_import_published import CLIP, QUERIES, published  # noqa: F401 - the fixture

from vlv_pipeline.models.provenance_fingerprints import t2i_fingerprint
from vlv_pipeline.params.components import ComponentSpec
from vlv_pipeline.pipelines.import_published.nodes import import_published_captioner


def test_the_imported_captioner_records_the_setting_it_was_made_for(published, tmp_path):  # noqa: F811
    from transformers import CLIPTextConfig

    _, params, tokenizer, _ = published
    sd = tmp_path / "stable-diffusion-2-1-base"  # a local copy: only its text encoder's config
    CLIPTextConfig(**CLIP, vocab_size=len(tokenizer)).save_pretrained(sd / "text_encoder")
    text_encoder = ComponentSpec(pretrained=str(sd), subfolder="text_encoder")
    params = params.model_copy(update={"text_encoder": text_encoder})
    record = import_published_captioner(params).provenance
    assert (record["model"], record["made_by"]) == ("published_captioner", "import_published")
    assert record["t2i"] == str(sd)
    assert record["t2i_parts"] == {"text_encoder": t2i_fingerprint(sd)["parts"]["text_encoder"]}
    assert (record["encoder"], record["resolution"]) == ("florence2", params.crop_size)
    assert (record["num_queries"], record["embedding_width"]) == (QUERIES, CLIP["hidden_size"])
    assert record["llm"] == "a qwen2 LLM built from a config" and record["llm_fingerprint"]
