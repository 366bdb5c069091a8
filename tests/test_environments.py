"""Environments never cross (issue 26, item 17).

After `make run` (the shapes world, data root `data/`), a paper run that captions photos
loaded the shapes world's captioner from `data/06_models` and died with "The size of
tensor a (9216) must match the size of tensor b (64)". Now each environment writes under its
own data root, and a model directory says what it was made for: a paper run never sees the
shapes world's models, and one moved into its root is refused, before any node by the
preflight and, with the preflight off, by the loader, in one message that names what to run.

The `kedro run` subprocesses run in a copy of the project (no conf/local, an empty Hugging
Face cache, offline) on a shapes-world captioner built in a second from tiny configs (the
shipped teacher's text encoder, an untrained small encoder and tiny Qwen2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapes_captioner import TEACHER_REF, TINY_QWEN2, save_captioner, shapes_captioner
from test_end_to_end import copy_project

KEDRO = str(Path(sys.executable).with_name("kedro"))
SD21 = "stabilityai/stable-diffusion-2-1-base"
OLD_ROOT = "data/06_models/vlv_captioner"  # where conf/paper read it when it shared data/
PAPER_ROOT = "data/paper/06_models/vlv_captioner"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("environments") / "project")
    (root / "conf/local").mkdir()
    photos = root.parent / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    # photo-sized: caption screens with caption.min_side, not ingest.min_side 512
    for i in range(2):
        pixels = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"photo{i}.jpg")
    caches = tmp_path_factory.mktemp("caches")
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(caches / "hf"),
        "HF_HOME": str(caches / "hf_home"),
    }
    for name in ("VLV_SKIP_PREFLIGHT", "VLV_TRACEBACK", "KEDRO_LOGGING_CONFIG"):
        env.pop(name, None)
    return root, photos, env


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """The shapes world's captioner as `make run` saved it before model directories recorded
    their setting: (its model, the folder holding it under ``legacy/vlv_captioner``)."""
    folder = tmp_path_factory.mktemp("captioners")
    captioner = shapes_captioner()
    save_captioner(captioner, folder / "legacy" / "vlv_captioner")
    return captioner, folder


@pytest.fixture(scope="module")
def captioners(legacy):
    """... and as it saves it now, with its record (``recorded/vlv_captioner``)."""
    from vlv_pipeline.models.provenance import captioner_record

    captioner, folder = legacy
    captioner.provenance = captioner_record(
        captioner,
        t2i=TEACHER_REF,
        resolution=None,
        llm={"init": {"model_type": "qwen2", **TINY_QWEN2}},
        model="vlv_captioner",
    )
    save_captioner(captioner, folder / "recorded" / "vlv_captioner")
    return folder


def _place(project, captioners, which: str, where: str) -> None:
    root = project[0]
    shutil.rmtree(root / "data", ignore_errors=True)
    shutil.copytree(captioners / which / "vlv_captioner", root / where)


def _caption(project, **extra_env):
    root, photos, env = project
    start = time.perf_counter()
    run = subprocess.run(
        [KEDRO, "run", "--env", "paper", "--pipeline", "caption"]
        + ["--params", f"caption.source={photos}"],
        cwd=root,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    print(f"\n(kedro run took {time.perf_counter() - start:.1f} s)\n{out[-3000:]}")
    assert run.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "size of tensor" not in out, out[-3000:]
    assert "Error: " in run.stderr, out[-3000:]
    return run.stderr[run.stderr.index("Error: ") :], out


def test_a_paper_run_does_not_see_the_shapes_worlds_captioner(project, legacy):
    """`make run` left its captioner in data/06_models; conf/paper reads data/paper now."""
    _place(project, legacy[1], "legacy", OLD_ROOT)
    message, out = _caption(project)
    assert message.startswith(
        "Error: `kedro run --env paper --pipeline caption` cannot start: 1 piece is missing"
    ), message
    assert (
        f"caption_trained_captioner ({PAPER_ROOT}): no saved version -> "
        "`kedro run --env paper --pipeline stage2` (or `--params caption.model=published`, "
        "after `kedro run --env paper --pipeline import_published`)" in message
    ), message
    assert "Running node" not in out


@pytest.mark.parametrize("which", ["recorded", "legacy"])
def test_a_shapes_captioner_in_the_paper_root_is_refused_before_any_node(
    project, captioners, which
):
    """Moved into the paper root: the preflight reads its record (JSON only; for a directory
    saved before records, its configs) and names what differs and what makes the right one."""
    _place(project, captioners, which, PAPER_ROOT)
    message, out = _caption(project)
    assert message.startswith(
        "Error: `kedro run --env paper --pipeline caption` cannot start: 1 model was made for "
        "another setting (nothing was run)."
    ), message
    against = " against src/vlv_pipeline/assets/teacher" if which == "recorded" else ""
    against_now = f" against {SD21}" if which == "recorded" else ""
    for piece in (
        f"caption_trained_captioner ({PAPER_ROOT}, version ",
        f"trained for 32 px images{against}",
        f"this run captions at 384 px{against_now}",
        "a small encoder",
        "a florence2 encoder",
        "-> `kedro run --env paper --pipeline vlv` (or `--params caption.model=published`, "
        "after `kedro run --env paper --pipeline import_published`)",
    ):
        assert piece in message, message
    assert "Running node" not in out


def test_with_the_preflight_off_the_loader_refuses_it(project, captioners):
    _place(project, captioners, "recorded", PAPER_ROOT)
    message, _ = _caption(project, VLV_SKIP_PREFLIGHT="1")
    for piece in (
        f"caption_trained_captioner ({PAPER_ROOT}, version ",
        "trained for 32 px images against src/vlv_pipeline/assets/teacher",
        f"this run captions at 384 px against {SD21}",
        "`kedro run --env paper --pipeline vlv`",
    ):
        assert piece in message, message
    assert len(message.splitlines()) < 6, message


def test_each_environment_writes_under_its_own_data_root():
    """Every catalog path, checkpoint folder and journal of an environment lies under its
    `globals:data`, and no two environments share one; the user's own sources stay put."""
    from kedro.config import OmegaConfigLoader

    root = Path(__file__).resolve().parents[1]
    roots, written = {}, {}
    for env in ("base", "paper", "rehearsal"):
        loader = OmegaConfigLoader(
            str(root / "conf"),
            base_env="base",
            default_run_env=env,
            merge_strategy={"parameters": "soft"},
        )
        roots[env] = loader["globals"]["data"]
        catalog = loader["catalog"]
        written[env] = {
            name: str(entry.get("filepath") or entry.get("path"))
            for name, entry in catalog.items()
            if isinstance(entry, dict) and (entry.get("filepath") or entry.get("path"))
        }
        parameters = loader["parameters"]
        for block in ("stage1", "stage2"):
            assert parameters[block]["checkpoint_dir"].startswith(roots[env] + "/"), (env, block)
    assert roots == {"base": "data", "paper": "data/paper", "rehearsal": "data/rehearsal"}
    assert written["paper"]["vlv_captioner"] == "data/paper/06_models/vlv_captioner"
    assert written["paper"]["raw_images"] == "data/01_raw/laion"  # your shards, read-only
    for env, paths in written.items():
        # the package's shipped models (the flow teacher's VAE and judge) are read, never written
        shipped = {n for n, p in paths.items() if p.startswith("src/vlv_pipeline/assets/")}
        assert shipped == {"shipped_teacher_vae", "shipped_probe"}, (env, shipped)
        for name, path in paths.items():
            if (name != "raw_images" or env != "paper") and name not in shipped:
                assert path.startswith(roots[env] + "/"), (env, name, path)
