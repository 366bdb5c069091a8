"""The evaluate pipeline's nodes on tiny replicas: captions, reconstructions, scores, report."""

import json

import pytest
import torch
from stage2_factory import stage2_inputs

from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.pipelines.evaluate import nodes
from vlv_pipeline.pipelines.stage2 import nodes as stage2


@pytest.fixture(scope="module")
def trained(tiny_world, tiny_sd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp)
    captioner, log = stage2.train_stage2(data, encoder, cache, params)
    stage1 = Stage1Params(
        t2i=str(tiny_sd),
        encoder={
            "backbone": "small",
            "num_queries": 4,
            "small": {"width": 16, "heads": 2, "image_size": 16, "vision_tower": "t2i_vae"},
        },
        training={"steps": 1, "batch_size": 4, "learning_rate": 1e-3},
    )
    baseline, baseline_log = stage2.train_baseline(data, params, stage1)
    probe = AttributeProbe(image_size=16, width=4, hidden=8)
    probe.save_pretrained(tmp / "probe")
    return encoder, captioner, baseline, log, baseline_log, tmp


def _params(tiny_sd, tmp, **kw):
    values = dict(
        stage1_t2i=str(tiny_sd),
        render_t2i=str(tiny_sd),
        images=4,
        sampling={"steps": 2, "batch_size": 4},
        probe=str(tmp / "probe"),
        grid_images=3,
    )
    return EvaluateParams(**{**values, **kw})


def test_evaluation_scores_the_model_and_every_baseline(tiny_world, tiny_sd, trained):
    encoder, captioner, baseline, log, baseline_log, tmp = trained
    source, manifest = tiny_world
    params = _params(tiny_sd, tmp)
    data = nodes.load_eval_data(source, manifest, params)
    assert len(data.image_ids) == 4 and data.images().shape == (4, 3, 16, 16)
    assert data.pixels[0].dtype == torch.uint8  # read per item, never the whole split
    captions = nodes.caption_eval_images(captioner, baseline, data, params)
    assert list(captions.columns) == ["image_id", "reference", "vlv", "without_stage1", "chance"]
    assert all(a != b for a, b in zip(captions["chance"], captions["reference"], strict=True))
    renders = nodes.reconstruct(encoder, data, captions, params)
    assert renders.names() == list(nodes.RECONSTRUCTIONS)
    metrics, samples, grid_items = nodes.score_evaluation(data, captions, renders, params)
    assert set(metrics["captions"]) == {"vlv", "without_stage1", "chance"}
    for row in metrics["captions"].values():
        assert {"bleu4", "rouge_l", "cider", "exact_scene", "shape_precision"} <= set(row)
    # the chance captions are real captions of the world: they parse completely
    assert metrics["captions"]["chance"]["parsed"] == 1.0
    for row in metrics["reconstruction"].values():
        assert {"exact_scene", "attributes", "frechet_probe", "what"} <= set(row)
    assert {"vlv_bleu4", "from_embeddings_exact", "chance_exact"} <= set(samples.columns)
    json.dumps(metrics)  # the versioned json must accept it
    assert list(grid_items) == ["original", "from_embeddings", "from_caption"]
    grid, same = nodes.plot_eval_grid(grid_items, captions, params)
    assert grid is same
    assert len(grid.axes) == 3 * 3
    report = nodes.write_report(metrics, grid, log, log, baseline_log, {"evaluate": {"x": 1}})
    assert report.startswith("<!doctype html>") and "VLV captioner" in report
    assert "without stage 1" in report and "upper bound" in report and "Frechet (probe)" in report
    assert report.count("data:image/png;base64,") == 3  # grid, stage-1 and stage-2 curves
    preview = nodes.plot_report_preview(metrics, grid)
    texts = {t.get_text() for ax in preview.axes for t in ax.texts} | {
        c.get_text().get_text()
        for ax in preview.axes
        for tbl in ax.tables
        for c in tbl.get_celld().values()
    }
    assert "VLV captioner" in texts and "exact scene" in texts


def test_fid_clip_judge_offline_says_what_to_download(tiny_world, tiny_sd, trained):
    encoder, captioner, baseline, *_, tmp = trained
    source, manifest = tiny_world
    params = _params(tiny_sd, tmp, judge="fid_clip", probe=None, clip_model=str(tmp / "no-clip"))
    data = nodes.load_eval_data(source, manifest, params)
    captions = nodes.caption_eval_images(captioner, baseline, data, params)
    renders = {"from_embeddings": data.images()}
    with pytest.raises(RuntimeError, match="torch-fidelity.*download"):
        nodes.score_evaluation(data, captions, renders, params)


def test_pixels_judge_needs_no_weights_and_ranks_closer_images_higher(tiny_world, tiny_sd, trained):
    encoder, captioner, baseline, *_, tmp = trained
    source, manifest = tiny_world
    params = _params(tiny_sd, tmp, judge="pixels", probe=None)
    data = nodes.load_eval_data(source, manifest, params)
    captions = nodes.caption_eval_images(captioner, baseline, data, params)
    originals = data.images()
    renders = {
        "from_embeddings": originals.clone(),  # perfect
        "from_caption": (originals + 0.2 * torch.randn_like(originals)).clamp(-1, 1),
    }
    metrics, _, _ = nodes.score_evaluation(data, captions, renders, params)
    exact, noisy = (metrics["reconstruction"][k] for k in ("from_embeddings", "from_caption"))
    assert exact["mse"] == 0 and noisy["mse"] > 0.01 and exact["psnr"] > noisy["psnr"]
    assert "bleu4" in metrics["captions"]["vlv"]  # text metrics need no judge


def test_batch_by_batch_renders_equal_one_render_of_the_whole_split(tiny_world, tiny_sd, trained):
    """Evaluate renders and scores one batch at a time; the images are those the whole split
    rendered in one call gives (so the default run's numbers did not move)."""
    from vlv_pipeline.models.t2i import FrozenT2I
    from vlv_pipeline.models.teacher import render

    encoder, captioner, baseline, *_, tmp = trained
    source, manifest = tiny_world
    params = _params(tiny_sd, tmp, sampling={"steps": 2, "batch_size": 3})
    data = nodes.load_eval_data(source, manifest, params)
    captions = nodes.caption_eval_images(captioner, baseline, data, params)
    chunks: dict[str, list] = {}
    for name, start, originals, images in nodes.reconstruct(encoder, data, captions, params):
        assert torch.equal(originals, data.images(start, start + len(images)))
        chunks.setdefault(name, []).append(images)
    assert [len(c) for c in chunks.values()] == [2] * len(chunks)  # 4 images, batches of 3
    t2i = FrozenT2I.load(str(tiny_sd))
    s = params.sampling
    kwargs = dict(steps=s.steps, guidance=s.guidance, seed=s.seed, batch_size=3)
    whole = t2i.render(t2i.condition_images(encoder, data.images(), 3), **kwargs)
    assert torch.equal(torch.cat(chunks["from_embeddings"]), whole)
    whole = render(t2i.pipeline(), captions=captions["vlv"].tolist(), **kwargs)
    assert torch.equal(torch.cat(chunks["from_caption"]), whole)


def test_chance_order_never_keeps_an_images_own_caption():
    for n in (2, 3, 10):
        order = nodes._chance_order(n, seed=n)
        assert sorted(order) == list(range(n)) and all(i != j for i, j in enumerate(order))


def test_a_split_without_images_is_refused(tiny_world, tiny_sd, tmp_path):
    source, manifest = tiny_world
    with pytest.raises(ValueError, match="evaluate.split 'val' has 0 images"):
        nodes.load_eval_data(source, manifest, _params(tiny_sd, tmp_path, split="val"))
