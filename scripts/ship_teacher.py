"""Copy a teacher trained by `kedro run --pipeline teacher` into the package.

    python scripts/ship_teacher.py [--version VERSION] [--note TEXT]
    python scripts/ship_teacher.py --flow [--version VERSION] [--note TEXT]

``--flow`` ships the flow-matching teacher (`--tags flow_matching`) instead: its
`teacher_flow`, metrics and figures go to src/vlv_pipeline/assets/teacher_flow/ and
TEACHER_FLOW_CARD.md; the SD-style teacher and the probe are left as they are.

Takes the latest (or the given) versions of `teacher`, `attribute_probe`,
`teacher_metrics`, `teacher_samples` and `teacher_loss` from data/, and writes
src/vlv_pipeline/assets/{teacher,attribute_probe}/ plus TEACHER_CARD.md, metrics.json and the
two figures beside them. The default run loads the teacher from there by path, as
conf/paper loads stable-diffusion-2-1-base by hub id. Refuses to ship more than 20 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "vlv_pipeline" / "assets"
LIMIT_BYTES = 20 * 1024 * 1024


def latest(filepath: Path, version: str | None) -> Path:
    name = filepath.name
    versions = sorted(p for p in filepath.glob(f"*/{name}"))
    if version is not None:
        versions = [p for p in versions if p.parent.name == version]
    if not versions:
        raise SystemExit(
            f"no version{' ' + version if version else ''} of {filepath}: run `kedro run --pipeline teacher`"
        )
    return versions[-1]


def replace_dir(source: Path, target: Path) -> None:
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, tmp)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old)


def copy_reports(figures: list[Path], metrics_path: Path, name: str, version: str) -> dict:
    """The figures, and the metrics (with their version) as ``name``, into the assets."""
    for figure in figures:
        shutil.copyfile(figure, ASSETS / figure.name)
    metrics = json.loads(metrics_path.read_text())
    (ASSETS / name).write_text(json.dumps({**metrics, "version": version}, indent=2))
    return metrics


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def quality(metrics: dict, sampler: str, rows: list, name: str, params: dict) -> str:
    """A card's measured-quality table, its figures (``<name>_samples.png``, ``_loss.png``)
    and the parameters it was trained with (``<name>:`` in parameters_teacher.yml)."""
    table = "\n".join(
        f"| {what} | {m['exact_scene']:.4f} | {m['position']:.4f} | {m['shape']:.4f} | "
        f"{m['colour']:.4f} | {m['size']:.4f} |"
        for what, m in rows
    )
    s = metrics["sampling"]
    return f"""Judged by the attribute probe on {metrics.get("eval_images", 256)} test captions, rendered with
{sampler}, {s["steps"]} steps, guidance {s["guidance"]}, seed {s["seed"]}.

| what | exact scene | position | shape | colour | size |
|---|---|---|---|---|---|
{table}

![samples]({name}_samples.png)

![loss]({name}_loss.png)

## Parameters

```yaml
{yaml.safe_dump({name: params}, sort_keys=False)}```
"""


def card(metrics: dict, version: str, params: dict, world: dict, note: str) -> str:
    render, real = metrics["render"], metrics["probe_test_real"]
    seconds = metrics["seconds"]
    rows = [
        ("teacher renders of test captions (probe)", render),
        ("VAE reconstructions of test images (probe)", render["vae_reconstruction"]),
        ("real test renders (probe accuracy)", real),
    ]
    sampling = metrics["sampling"]
    return f"""# The shipped shapes-world teacher

A miniature Stable Diffusion (diffusers `StableDiffusionPipeline` directory: AutoencoderKL,
CLIPTextModel with the world's word-level tokenizer, UNet2DConditionModel, DDPMScheduler
with `prediction_type: sample`) and the attribute probe that judges it. Both were trained
by this project's own `teacher` pipeline on the shapes world; nothing was downloaded.

- produced by: `kedro run --pipeline teacher` (version `{version}`), shipped with
  `python scripts/ship_teacher.py --version {version}`
- data: the shapes world with seed {world["seed"]}, {world["counts"]["train"]} train images
  ({world["image_size"]} px, up to {world["max_objects"]} objects)
- training time on 2 CPU cores: VAE {seconds["vae"] / 60:.1f} min, text encoder + UNet
  {seconds["text_to_image"] / 60:.1f} min, probe {seconds["probe"] / 60:.1f} min{note}
- weights: UNet and VAE in float16 safetensors, text encoder in float32
  (`StableDiffusionPipeline.from_pretrained(dir)` gives a float32 pipeline)

## Measured quality

{quality(metrics, sampling["scheduler"], rows, "teacher", params)}"""


def flow_card(metrics: dict, version: str, params: dict, world: dict, note: str) -> str:
    render = metrics["render"]
    rows = [
        ("teacher renders of test captions (probe)", render),
        ("VAE reconstructions of test images (probe)", render["vae_reconstruction"]),
    ]
    sampling = metrics["sampling"]
    sampler = sampling["scheduler"] or "its own FlowMatchEulerDiscreteScheduler"
    minutes = metrics["seconds"]["text_to_image"] / 60
    return f"""# The shipped shapes-world flow-matching teacher

A miniature Stable Diffusion 3 (diffusers `StableDiffusion3Pipeline` directory: an
SD3Transformer2DModel (MMDiT) over 2x2 patches of 8x8 latents, two CLIPTextModelWithProjection
text encoders reading the world's word-level tokenizer, no T5 (`text_encoder_3: [null, null]`),
FlowMatchEulerDiscreteScheduler) trained with flow matching by this project's own `teacher`
pipeline on the shapes world; nothing was downloaded. Its AutoencoderKL is the SD-style
teacher's (`teacher/vae`, shared: one latent space for both), and the attribute probe that
judges both is `attribute_probe/` (TEACHER_CARD.md).

- produced by: `kedro run --pipeline teacher --tags flow_matching` (version `{version}`),
  shipped with `python scripts/ship_teacher.py --flow --version {version}`
- use it: `kedro run --params t2i=src/vlv_pipeline/assets/teacher_flow`
- data: the shapes world with seed {world["seed"]}, {world["counts"]["train"]} train images
  ({world["image_size"]} px, up to {world["max_objects"]} objects)
- training time on 2 CPU cores: CLIPs + MMDiT {minutes:.1f} min{note}
- weights: MMDiT and VAE in float16 safetensors, the CLIPs in float32
  (`StableDiffusion3Pipeline.from_pretrained(dir, text_encoder_3=None, tokenizer_3=None)`,
  as SD 3 is loaded without T5, gives a float32 pipeline)

## Measured quality

{quality(metrics, sampler, rows, "teacher_flow", params)}"""


def ship_flow(args) -> None:
    teacher = latest(ROOT / "data/06_models/teacher_flow", args.version)
    version = teacher.parent.name
    metrics_path = latest(ROOT / "data/08_reporting/teacher_flow_metrics.json", version)
    figures = [
        latest(ROOT / f"data/08_reporting/{name}", version)
        for name in ("teacher_flow_samples.png", "teacher_flow_loss.png")
    ]
    total = size(teacher)
    if total > LIMIT_BYTES:
        raise SystemExit(f"the teacher is {total / 2**20:.1f} MB, over the 20 MB limit")
    replace_dir(teacher, ASSETS / "teacher_flow")
    metrics = copy_reports(figures, metrics_path, "teacher_flow_metrics.json", version)
    conf = yaml.safe_load((ROOT / "conf/base/parameters_teacher.yml").read_text())
    world = yaml.safe_load((ROOT / "conf/base/parameters_world.yml").read_text())["world"]
    note = f" ({args.note})" if args.note else ""
    (ASSETS / "TEACHER_FLOW_CARD.md").write_text(
        flow_card(metrics, version, conf["teacher_flow"], world, note)
    )
    print(f"shipped flow teacher {version} ({total / 2**20:.1f} MB) to assets/teacher_flow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="the teacher version to ship (default: latest)")
    parser.add_argument("--note", default="", help="extra text for the training-time line")
    parser.add_argument(
        "--curve", help="OUT_PREFIX of scripts/teacher_quality_curve.py: adds quality vs time"
    )
    parser.add_argument("--flow", action="store_true", help="ship the flow-matching teacher")
    args = parser.parse_args()
    if args.flow:
        ship_flow(args)
        return

    teacher = latest(ROOT / "data/06_models/teacher", args.version)
    version = teacher.parent.name
    probe = latest(ROOT / "data/06_models/attribute_probe", version)
    metrics_path = latest(ROOT / "data/08_reporting/teacher_metrics.json", version)
    figures = [
        latest(ROOT / f"data/08_reporting/{name}", version)
        for name in ("teacher_samples.png", "teacher_loss.png")
    ]

    total = size(teacher) + size(probe)
    if total > LIMIT_BYTES:
        raise SystemExit(f"teacher + probe are {total / 2**20:.1f} MB, over the 20 MB limit")
    ASSETS.mkdir(parents=True, exist_ok=True)
    replace_dir(teacher, ASSETS / "teacher")
    replace_dir(probe, ASSETS / "attribute_probe")
    metrics = copy_reports(figures, metrics_path, "teacher_metrics.json", version)
    conf = yaml.safe_load((ROOT / "conf/base/parameters_teacher.yml").read_text())["teacher"]
    world = yaml.safe_load((ROOT / "conf/base/parameters_world.yml").read_text())["world"]
    note = f" ({args.note})" if args.note else ""
    text = card(metrics, version, conf, world, note)
    if args.curve:
        rows = json.loads(Path(f"{args.curve}.json").read_text())
        shutil.copyfile(f"{args.curve}.png", ASSETS / "teacher_quality_curve.png")
        (ASSETS / "teacher_quality_curve.json").write_text(json.dumps(rows, indent=2))
        per_step = metrics["seconds"]["text_to_image"] / conf["unet_training"]["steps"]
        table = "\n".join(
            f"| {r['step']} | {r['step'] * per_step / 60:.1f} | {r['exact_scene']:.4f} | {r['attributes']:.4f} |"
            for r in rows
        )
        text = text.replace(
            "![samples]",
            "## Quality against training time\n\n"
            "EMA weights of each saved checkpoint, judged as above "
            "(`scripts/teacher_quality_curve.py`); minutes are the text-to-image run's "
            f"measured {per_step:.3f} s/step.\n\n"
            "| step | minutes | exact scene | attributes |\n|---|---|---|---|\n"
            f"{table}\n\n![quality](teacher_quality_curve.png)\n\n![samples]",
            1,
        )
    (ASSETS / "TEACHER_CARD.md").write_text(text)
    print(f"shipped teacher {version} ({total / 2**20:.1f} MB) to {ASSETS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
