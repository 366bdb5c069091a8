"""The evaluate pipeline's nodes on tiny replicas: captions, reconstructions, scores, report."""

import json

import pytest
import torch
from stage2_factory import trained_captioners

from vlv_pipeline.metrics.tables import PaperTable, Row
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.seeds import image_generators, image_seed
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.evaluate import nodes
from vlv_pipeline.pipelines.evaluate.renders import RECONSTRUCTIONS, reconstruct
from vlv_pipeline.pipelines.evaluate.report import plot_eval_grid, plot_report_preview, write_report
from vlv_pipeline.pipelines.evaluate.scoring import score_evaluation


@pytest.fixture(scope="module")
def trained(tiny_world, tiny_sd, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    encoder, captioner, baseline, log, baseline_log = trained_captioners(tiny_world, tiny_sd, tmp)
    probe = AttributeProbe(image_size=16, width=4, hidden=8)
    probe.save_pretrained(tmp / "probe")
    return encoder, captioner, baseline, log, baseline_log, tmp


def _params(tiny_sd, tmp, **kw):
    values = dict(
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
    renders = reconstruct(encoder, data, captions, params, T2IParams(model=params.render_t2i))
    assert renders.names() == list(RECONSTRUCTIONS)
    metrics, samples, grid_items = score_evaluation(data, captions, renders, params)
    assert set(metrics["captions"]) == {"vlv", "without_stage1", "chance"}
    for row in metrics["captions"].values():
        assert {"bleu4", "rouge_l", "cider", "exact_scene", "shape_precision"} <= set(row)
    # the chance captions are real captions of the world: they parse completely
    assert metrics["captions"]["chance"]["parsed"] == 1.0
    for row in metrics["reconstruction"].values():
        assert {"exact_scene", "attributes", "frechet_probe", "what"} <= set(row)
        shares = row["spatial_exact_cell"] + row["spatial_elsewhere"] + row["spatial_not_found"]
        assert shares == pytest.approx(1.0)  # every true object: in place, elsewhere or missing
    assert {"vlv_bleu4", "from_embeddings_exact", "chance_exact"} <= set(samples.columns)
    json.dumps(metrics)  # the versioned json must accept it
    assert list(grid_items) == ["original", "from_embeddings", "from_caption"]
    grid, same = plot_eval_grid(grid_items, captions, params)
    assert grid is same
    assert len(grid.axes) == 3 * 3
    report = write_report(metrics, grid, log, log, baseline_log, {"evaluate": {"x": 1}})
    assert report.startswith("<!doctype html>") and "VLV captioner" in report
    assert "without stage 1" in report and "upper bound" in report and "Frechet (probe)" in report
    assert report.count("data:image/png;base64,") == 3  # grid, stage-1 and stage-2 curves
    assert "The paper's tables" not in report  # none handed over: no section
    table = PaperTable(
        "table2",
        "Table 2: rated captions",
        [("judge", "judge")],
        [Row("VLV", {"judge": 5.5}, "model"), Row("VLV", {"judge": 5.18}, "paper")],
    )
    with_tables = write_report(metrics, grid, log, log, baseline_log, {}, table.to_dict())
    assert "The paper's tables, measured in this run" in with_tables
    assert '<tr class="paper"><td>VLV (paper)</td><td class="num">5.18</td>' in with_tables
    preview = plot_report_preview(metrics, grid)
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
        score_evaluation(data, captions, renders, params)


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
    metrics, _, _ = score_evaluation(data, captions, renders, params)
    exact, noisy = (metrics["reconstruction"][k] for k in ("from_embeddings", "from_caption"))
    assert exact["mse"] == 0 and noisy["mse"] > 0.01 and exact["psnr"] > noisy["psnr"]
    assert "bleu4" in metrics["captions"]["vlv"]  # text metrics need no judge


def test_each_image_draws_its_own_noise_whatever_the_batches(tiny_world, tiny_sd, trained):
    """Evaluate renders one batch at a time, each image from its own generator (seeded from
    sampling.seed and the image's index): the images are those one render call over the whole
    split gives, and do not depend on the batch size (nor, so, on how ranks share the split)."""
    from vlv_pipeline.models.teacher import render
    from vlv_pipeline.models.teachers import load_teacher

    encoder, captioner, baseline, *_, tmp = trained
    source, manifest = tiny_world
    params = _params(tiny_sd, tmp, sampling={"steps": 2, "batch_size": 3})
    data = nodes.load_eval_data(source, manifest, params)
    captions = nodes.caption_eval_images(captioner, baseline, data, params)

    def rendered(params) -> dict[str, torch.Tensor]:
        chunks: dict[str, list] = {}
        for name, start, originals, images in reconstruct(
            encoder, data, captions, params, T2IParams(model=params.render_t2i)
        ):
            assert torch.equal(originals, data.images(start, start + len(images)))
            chunks.setdefault(name, []).append(images)
        assert [len(c) for c in chunks.values()] == [-(-4 // params.sampling.batch_size)] * 5
        return {name: torch.cat(c) for name, c in chunks.items()}

    in_threes = rendered(params)
    t2i = load_teacher(str(tiny_sd))
    s = params.sampling
    kwargs = dict(steps=s.steps, guidance=s.guidance, batch_size=3)
    whole = t2i.render(
        t2i.condition_images(encoder, data.images(), 3),
        generator=image_generators(s.seed, range(4)),
        **kwargs,
    )
    assert torch.equal(in_threes["from_embeddings"], whole)
    whole = render(
        t2i.pipeline(),
        captions=captions["vlv"].tolist(),
        generator=image_generators(s.seed, range(4)),
        **kwargs,
    )
    assert torch.equal(in_threes["from_caption"], whole)
    in_pairs = rendered(_params(tiny_sd, tmp, sampling={"steps": 2, "batch_size": 2}))
    for name, images in in_threes.items():
        torch.testing.assert_close(in_pairs[name], images, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="3 generators for 4 images"):
        render(
            t2i.pipeline(),
            captions=captions["vlv"].tolist(),
            generator=image_generators(s.seed, range(3)),
            **kwargs,
        )


def test_image_seeds_differ_by_image_and_by_seed():
    seeds = {image_seed(seed, i) for seed in (0, 1) for i in range(100)}
    assert len(seeds) == 200 and all(0 <= x < 2**63 for x in seeds)
    assert image_seed(0, 1) != image_seed(1, 0)


def test_chance_order_never_keeps_an_images_own_caption():
    for n in (2, 3, 10):
        order = nodes._chance_order(n, seed=n)
        assert sorted(order) == list(range(n)) and all(i != j for i, j in enumerate(order))


def test_a_split_without_images_is_refused(tiny_world, tiny_sd, tmp_path):
    source, manifest = tiny_world
    with pytest.raises(ValueError, match="evaluate.split 'val' has 0 images"):
        nodes.load_eval_data(source, manifest, _params(tiny_sd, tmp_path, split="val"))
