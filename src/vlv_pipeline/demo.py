"""The demo page: an uploaded image's caption, its render from its stage-1 caption embeddings,
and the re-render of its caption, on a local Gradio page (issue 29).

    make demo                                    # the default world, after `make run`
    python -m vlv_pipeline demo [--env paper] [--port N] [--params caption.model=published]

The models are the latest that the chosen Kedro environment's catalog holds, loaded once when
the page starts, and chosen as the pipelines choose them:

- the captioner as the ``caption`` pipeline chooses it (``caption.model``: ``trained``, stage
  2's ``vlv_captioner``; ``published``, ``import_published``'s), wrapped in ``inference.
  Captioner``: an upload is screened, decoded and captioned exactly as ``kedro run
  --pipeline caption`` would caption that file, with ``params:caption``'s settings;
- the encoder and the T2I models as the ``reconstruct`` pipeline chooses them
  (``reconstruct.encoder``: stage 1's ``vlv_encoder``, or the captioner's own;
  ``t2i.model`` renders the embeddings, ``reconstruct.render_t2i`` the caption), with
  ``reconstruct.sampling``'s sampler, steps, guidance and seed. An upload is rendered as the
  ``reconstruct`` pipeline renders a source holding that one file: the same crops, and the
  noise of image 0 (``image_seed(sampling.seed, 0)``), so the page's renders are the
  pipeline's.

A bad upload gets the ``caption`` verdict (``not_an_image``, ``too_large``, ``corrupt``,
``too_small``, ...), shown on the page; an unexpected error is shown as one line on the page
and its traceback goes to the server's console, never to the page. A model that is not
saved yet stops the start with a message naming what to run (``make run``).

The page serves on 127.0.0.1 only, sends nothing anywhere (Gradio's analytics are off) and
handles one upload at a time.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlv_pipeline.errors import InputError, MissingInputError, ModelDirectoryError, UserError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 7860
TITLE = "VLV auto-encoder: caption and reconstruct an image"

# the verdicts' words on the page (the `rejected` column of `caption`'s table keeps the code)
VERDICTS = {
    "not_an_image": "not an image",
    "too_large": "too large",
    "corrupt": "corrupt",
    "empty_file": "an empty file",
    "too_small": "too small",
    "too_many_pixels": "too many pixels",
    "bad_aspect_ratio": "too long and thin (aspect ratio)",
}


class MissingModelError(MissingInputError):
    """A model the page needs is not saved where the catalog reads it."""


def _run_command(env: str | None, what: str) -> str:
    """The command that makes ``what`` (a pipeline name) in ``env``."""
    if what == "__default__":
        return f'make run ARGS="--env {env}"' if env else "make run"
    env_flag = f" --env {env}" if env else ""
    return f"kedro run{env_flag} --pipeline {what}"


@dataclass
class Upload:
    """What the page shows for one upload: an error, or the caption and the three images."""

    error: str | None = None
    caption: str | None = None
    original: Any = None
    from_embeddings: Any = None
    from_caption: Any = None


@dataclass
class DemoModels:
    """The models behind the page, loaded: the captioner (``inference.Captioner``), the
    encoder whose embeddings are rendered, the T2I model, the pipeline that renders captions
    and its sampler, and ``params:reconstruct`` (how the renders are made)."""

    captioner: Any
    encoder: Any
    t2i: Any
    caption_pipeline: Any
    caption_scheduler: str | None
    caption_call_kwargs: dict  # the caption model family's call arguments (call_kwargs_of)
    params: Any  # ReconstructParams
    crop: Callable
    render_side: int
    encoder_side: int
    where: dict[str, str] = field(default_factory=dict)

    # ---------------------------------------------------------------- one upload

    def _sampling(self, scheduler: str | None) -> dict:
        """The reconstruct pipeline's settings for image 0 of a source (its own noise)."""
        import torch

        from vlv_pipeline.models.seeds import image_seed

        s = self.params.sampling
        return {
            "scheduler": scheduler,
            "steps": s.steps,
            "guidance": s.guidance,
            "batch_size": 1,
            "generator": [torch.Generator().manual_seed(image_seed(s.seed, 0))],
            "size": self.render_side,
        }

    def caption(self, path: str | os.PathLike) -> str:
        """The caption of the image file at ``path`` (``Captioner.caption``: the caption
        pipeline's screening and decoding); a refused file raises ``ImageRefusedError``."""
        return self.captioner.caption(Path(path))

    def reconstruct(self, path: str | os.PathLike) -> Upload:
        """The file at ``path`` captioned, and rendered from its embeddings and from its
        caption, as the ``reconstruct`` pipeline renders a source of this one file."""
        import torch
        from PIL import Image

        from vlv_pipeline.imaging.checks import decode_normalised
        from vlv_pipeline.models.teacher import render
        from vlv_pipeline.world.data import pil_to_tensor, tensor_to_uint8

        path = Path(path)
        caption = self.caption(path)  # screened first: a refused file goes no further
        image = decode_normalised(path.read_bytes(), None)  # reconstruct's read-back
        pixels = pil_to_tensor(self.crop(image, self.encoder_side))[None]
        with torch.no_grad():
            conditions = self.t2i.condition_images(self.encoder, pixels, 1)
            from_embeddings = self.t2i.render(
                conditions, **self._sampling(self.params.sampling.scheduler)
            )
            from_caption = render(
                self.caption_pipeline,
                captions=[caption],
                call_kwargs=self.caption_call_kwargs,
                **self._sampling(self.caption_scheduler),
            )
        return Upload(
            caption=caption,
            original=self.crop(image, self.render_side),
            from_embeddings=Image.fromarray(tensor_to_uint8(from_embeddings)[0]),
            from_caption=Image.fromarray(tensor_to_uint8(from_caption)[0]),
        )

    def describe(self) -> str:
        """One Markdown paragraph: which models the page uses and how it renders."""
        s = self.params.sampling
        lines = [f"- **{name}**: `{where}`" for name, where in self.where.items()]
        lines.append(
            f"- **renders**: {self.render_side} px, {s.scheduler or 'the pipeline’s sampler'}, "
            f"{s.steps} steps, guidance {s.guidance:g}, seed {s.seed} (as `kedro run "
            "--pipeline reconstruct` renders a one-image folder)"
        )
        return "\n".join(lines)


def refusal_text(error: Exception, path: Path, name: str) -> str:
    """The page's message for a refused upload: the verdict in words, its code (the caption
    pipeline's ``rejected`` value) and what was found, the server's temporary path replaced
    by the uploaded file's name."""
    from vlv_pipeline.inference import ImageRefusedError

    if isinstance(error, ImageRefusedError):
        words = VERDICTS.get(error.reason, error.reason.replace("_", " "))
        detail = error.detail.replace(str(path), name)
        return f"Refused: {name} is {words} ({error.reason}). {detail}"
    return f"Refused: {name}: {error}"


def handle_upload(models: DemoModels, path: str | os.PathLike | None) -> Upload:
    """What the page shows for the file uploaded at ``path``: never raises."""
    if not path:
        return Upload(error="Upload an image file.")
    path = Path(path)
    name = path.name
    try:
        return models.reconstruct(path)
    except UserError as error:  # the image's verdict, or a file the page cannot read
        return Upload(error=refusal_text(error, path, name))
    except Exception as error:  # noqa: BLE001 - a bug: one line on the page, the traceback logged
        logger.exception("demo: %s failed", name)
        return Upload(
            error=f"Something went wrong with {name} ({type(error).__name__}); the server's "
            "console has the details."
        )


# --------------------------------------------------------------------------- loading


def load_models(
    env: str | None = None,
    *,
    project_path: str | os.PathLike | None = None,
    conf_source: str | None = None,
    runtime_params: dict | None = None,
) -> DemoModels:
    """The page's models, loaded from the Kedro environment ``env``'s catalog (its latest
    versions) with its parameters (``runtime_params``: ``--params``)."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(
        project_path=project_path,
        env=env,
        conf_source=conf_source,
        runtime_params=runtime_params or {},
    ) as session:
        context = session.load_context()
        params = context.params
        return models_from(
            context.catalog,
            params["caption"],
            params["reconstruct"],
            params["ingest"],
            params["t2i"],
            env,
        )


def _typed(value, model):
    return value if isinstance(value, model) else model(**value)


def models_from(catalog, caption, reconstruct, ingest, t2i, env: str | None = None) -> DemoModels:
    """The page's models from a catalog and the ``caption``, ``reconstruct``, ``ingest`` and
    ``t2i`` parameter blocks (typed or plain dicts)."""
    from vlv_pipeline.inference import Captioner
    from vlv_pipeline.models.captioning import NoCaptionerError, choose_captioner
    from vlv_pipeline.params.evaluate import CaptionParams
    from vlv_pipeline.params.ingest import IngestParams
    from vlv_pipeline.params.reconstruct import ReconstructParams
    from vlv_pipeline.params.t2i import T2IParams

    caption = _typed(caption, CaptionParams)
    ingest = _typed(ingest, IngestParams)
    reconstruct = _typed(reconstruct, ReconstructParams)
    t2i = _typed(t2i, T2IParams)
    # the renders follow the captioner the page captions with (caption.model)
    params = reconstruct.model_copy(update={"model": caption.model})

    trained = catalog.load("caption_trained_captioner")
    published = catalog.load("caption_published_captioner")
    try:
        model = choose_captioner(trained, published, caption, "caption")
    except NoCaptionerError as error:
        lazy = trained if caption.model == "trained" else published
        if caption.model == "trained":
            make = f"`{_run_command(env, '__default__')}` (or `{_run_command(env, 'stage2')}`)"
        else:
            make = f"`{_run_command(env, 'import_published')}`"
        raise MissingModelError(
            f"the demo page has no captioner: {getattr(lazy, 'where', lazy)} holds none "
            f"(caption.model: {caption.model}). Run {make} first, then start the page again."
        ) from error
    options = caption.model_dump(exclude={"model", "source", "kind"})
    captioner = Captioner(model, ingest=ingest.model_dump(), **options)
    lazy = trained if caption.model == "trained" else published
    where = {f"captioner ({caption.model})": str(getattr(lazy, "where", lazy))}
    encoder = _encoder(catalog, captioner, params, env, where)
    return _with_t2i(captioner, encoder, params, t2i, where)


def _encoder(catalog, captioner, params, env, where: dict) -> Any:
    """The encoder ``reconstruct.encoder`` names: stage 1's, or the captioner's own."""
    from kedro.io import DatasetError

    from vlv_pipeline.datasets.model_directory import LazyModel

    if params.encoder == "captioner":
        where["encoder"] = "the captioner's (reconstruct.encoder: captioner)"
        return captioner.model.encoder
    lazy = catalog.load("reconstruct_encoder")
    try:
        encoder = lazy() if isinstance(lazy, LazyModel) else lazy
    except (MissingInputError, ModelDirectoryError, DatasetError) as error:
        raise MissingModelError(
            f"the demo page has no stage-1 VLV encoder: {getattr(lazy, 'where', lazy)} holds "
            f"none (reconstruct.encoder: stage1). Run `{_run_command(env, '__default__')}` "
            f"(or `{_run_command(env, 'stage1')}`) first, then start the page again; or render "
            "from the captioner's own encoder: --params reconstruct.encoder=captioner."
        ) from error
    where["encoder (stage 1)"] = str(getattr(lazy, "where", "vlv_encoder"))
    return encoder


def _with_t2i(captioner, encoder, params, t2i_params, where: dict) -> DemoModels:
    """The T2I model(s) loaded once, as the reconstruct pipeline loads them."""
    import torch

    from vlv_pipeline.imaging.checks import resize_and_crop
    from vlv_pipeline.models.device import inference_device
    from vlv_pipeline.models.published import official_crop
    from vlv_pipeline.models.teachers import call_kwargs_of, load_teacher
    from vlv_pipeline.pipelines.reconstruct.renders import encoder_side, render_side

    device = inference_device()
    try:
        t2i = load_teacher(t2i_params.model, t2i_params.dtype, device)
    except UserError:
        raise
    except (OSError, ValueError) as error:
        raise MissingModelError(
            f"the demo page cannot load the T2I model {t2i_params.model} (t2i.model): "
            f"{type(error).__name__}: {error}"
        ) from error
    where["T2I (renders the embeddings)"] = t2i_params.model
    if not params.render_t2i or params.render_t2i == t2i_params.model:
        caption_pipeline, scheduler = t2i.pipeline(), params.sampling.scheduler
    else:
        from diffusers import DiffusionPipeline

        caption_pipeline = DiffusionPipeline.from_pretrained(
            params.render_t2i, dtype=getattr(torch, t2i_params.dtype)
        ).to(device)
        scheduler = None
        where["T2I (renders the caption)"] = params.render_t2i
    # the published captioner's encoder reads the official inference's crop
    published = params.encoder == "captioner" and params.model == "published"
    return DemoModels(
        captioner=captioner,
        encoder=encoder,
        t2i=t2i,
        caption_pipeline=caption_pipeline,
        caption_scheduler=scheduler,
        caption_call_kwargs=call_kwargs_of(params.render_t2i or t2i_params.model),
        params=params,
        crop=official_crop if published else resize_and_crop,
        render_side=render_side(t2i, params),
        encoder_side=encoder_side(encoder, params),
        where=where,
    )


# ------------------------------------------------------------------------------ page

# small renders (the shapes world's 32 px) fill their panel, pixel for pixel
CSS = """
#original img, #from-embeddings img, #from-caption img {
  width: 100%; height: calc(100% - 2.5em); margin-top: 2.5em;
  object-fit: contain; image-rendering: pixelated;
}
#error, #error p { color: #b00020; font-weight: 600; }
"""


def build_page(models: DemoModels):
    """The Gradio page (``gradio.Blocks``): an upload, the caption, the three images."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def on_upload(path):
        shown = handle_upload(models, path)
        error = f'<p role="alert">{html.escape(shown.error)}</p>' if shown.error else ""
        return (
            gr.update(value=error, visible=bool(shown.error)),
            shown.caption or "",
            shown.original,
            shown.from_embeddings,
            shown.from_caption,
        )

    # uploads and renders live in Gradio's cache (GRADIO_TEMP_DIR): kept an hour at most, and
    # cleared when the page stops
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {TITLE}\n\n{models.describe()}")
        upload = gr.File(
            label="Upload an image (PNG, JPEG, WebP, BMP or GIF)",
            file_count="single",
            type="filepath",
            elem_id="upload",
        )
        error = gr.HTML(visible=False, elem_id="error")
        caption = gr.Textbox(label="Caption", interactive=False, lines=3, elem_id="caption")
        with gr.Row():
            images = [
                gr.Image(
                    label=label,
                    type="pil",
                    format="png",  # the renders as they are (Gradio's default is lossy WebP)
                    interactive=False,
                    elem_id=elem,
                    height=256,
                    buttons=["download", "fullscreen"],  # no "share": nothing leaves the machine
                )
                for label, elem in (
                    ("the image (cropped as rendered)", "original"),
                    ("from its caption embeddings", "from-embeddings"),
                    ("from its caption", "from-caption"),
                )
            ]
        upload.upload(on_upload, inputs=upload, outputs=[error, caption, *images])
        upload.clear(
            lambda: (gr.update(value="", visible=False), "", None, None, None),
            outputs=[error, caption, *images],
        )
    return page


def serve(models: DemoModels, port: int = DEFAULT_PORT):
    """Serve the page on 127.0.0.1:``port`` and return it running (``page.block_thread()``
    waits until Ctrl+C; ``page.close()`` stops it)."""
    _bypass_proxies()
    page = build_page(models)
    page.queue(default_concurrency_limit=1)  # one upload at a time: the models are shared
    page.launch(
        server_name=HOST,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=False,
        ssr_mode=False,
        prevent_thread_lock=True,
        quiet=True,
        css=CSS,
    )
    return page


def _bypass_proxies() -> None:
    """127.0.0.1 in NO_PROXY: Gradio checks the page it started over HTTP, and an HTTP_PROXY
    of the user's would otherwise be asked for it (and the start refused)."""
    current = os.environ.get("NO_PROXY", os.environ.get("no_proxy", ""))
    hosts = [h.strip() for h in current.split(",") if h.strip()]
    if HOST not in hosts:
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join([*hosts, HOST])


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex((HOST, port)) == 0


def port_error(port: int, cause: BaseException | None = None) -> InputError:
    """The message for a port that is taken on 127.0.0.1."""
    why = f" ({cause})" if cause else ""
    return InputError(
        f"port {port} on {HOST} is in use{why} (another demo page?): stop it, or pick another "
        'with --port N (make demo ARGS="--port N")'
    )


def check_port(port: int) -> None:
    """A ``UserError`` when ``port`` is taken on 127.0.0.1 (checked before the models load)."""
    if _port_in_use(port):
        raise port_error(port)
