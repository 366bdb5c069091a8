"""The project's ``kedro run``: Kedro's own command, with the user's mistakes as one message;
``publish``, which uploads a model directory to the Hugging Face Hub (``publish.py``); and
``demo``, which serves the demo page on 127.0.0.1 (``demo.py``).

Kedro loads ``<package>.cli`` and its ``run`` replaces the built-in one; ``python -m
vlv_pipeline`` (and the ``vlv-pipeline`` script) find the same command. It takes every option
of Kedro's ``run`` (they are Kedro's own, so they follow Kedro's version) plus ``--verbose``.

- An error the user fixes (``errors.UserError`` and its subclasses, which include the
  preflight's; Kedro's parameter validation; a missing conf folder; an unknown pipeline name)
  prints ``Error: <message>`` alone and exits 1. Parameter errors are one line per bad key.
- Any other exception is a bug: its traceback is printed (plain Python, masked) and the
  command exits 1.
- ``--verbose`` or ``VLV_TRACEBACK=1`` prints the traceback of user errors too.
- Secrets are masked in everything printed here and in every log record
  (``masking.install_log_masking``).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli import project as _kedro_project

from vlv_pipeline.errors import UserError
from vlv_pipeline.masking import install_log_masking, mask_secrets
from vlv_pipeline.param_messages import parameter_message

TRACEBACK_ENV = "VLV_TRACEBACK"
_TRUE = {"1", "true", "yes", "on"}


class UserMessage(click.ClickException):
    """A user error as ``click`` prints it (``Error: ...``, exit 1); rank 0 only under
    ``accelerate launch`` (the other ranks exit quietly)."""

    def show(self, file: Any = None) -> None:
        from vlv_pipeline.distributed import rank

        if rank() == 0:
            super().show(file)


def tracebacks_wanted(verbose: bool = False) -> bool:
    return verbose or os.environ.get(TRACEBACK_ENV, "").strip().lower() in _TRUE


def is_user_error(error: BaseException) -> bool:
    """Whether the user fixes ``error`` (module docstring)."""
    from kedro.config import MissingConfigException
    from kedro.io import DatasetError
    from kedro.io.core import VersionNotFoundError
    from kedro.validation.exceptions import ParameterValidationError

    if isinstance(
        error, UserError | ParameterValidationError | MissingConfigException | click.ClickException
    ):
        return True
    if isinstance(error, VersionNotFoundError):
        return True  # a versioned dataset never saved (or a pinned version that is not there)
    if isinstance(error, DatasetError) and error.__cause__ is not None:
        return is_user_error(error.__cause__)  # Kedro wraps what a dataset's load raises
    text = str(error)
    if isinstance(error, ValueError) and text.startswith("Failed to find the pipeline named"):
        return True  # `--pipeline nosuch`: Kedro's message lists close names
    return type(error).__name__ == "ParserError" and text.startswith("Invalid YAML or JSON file")


def describe(error: BaseException) -> str:
    """The message a user sees for ``error``, secrets masked."""
    from kedro.validation.exceptions import ParameterValidationError

    if isinstance(error, ParameterValidationError):
        text = parameter_message(str(error))
    elif isinstance(error, click.ClickException):
        text = error.message
    else:
        text = str(error)
    return mask_secrets(text)


def _print_traceback(error: BaseException) -> None:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    click.echo(mask_secrets(text).rstrip("\n"), err=True)


def stop(error: Exception, verbose: bool = False) -> click.ClickException | click.exceptions.Exit:
    """What the command raises instead of ``error``: a message, or a bug's exit after its
    traceback."""
    if not is_user_error(error):
        _print_traceback(error)
        click.echo(
            "(an unexpected error, not a mistake in your settings: the traceback above is "
            "for a bug report)",
            err=True,
        )
        return click.exceptions.Exit(1)
    if tracebacks_wanted(verbose):
        _print_traceback(error)
    message = describe(error)
    if isinstance(error, click.ClickException):
        error.message = message  # keeps its own show() (the preflight's: rank 0 only)
        return error
    return UserMessage(message)


def _run(verbose: bool = False, **kwargs: Any) -> Any:
    install_log_masking(console_quiet=True)
    try:
        return _kedro_project.run.callback(**kwargs)
    except Exception as error:  # noqa: BLE001 - every exception: a message or a bug report
        raise stop(error, verbose) from None


@click.group(name="vlv_pipeline")
def cli() -> None:
    """Project commands (they replace Kedro's of the same name)."""


run = click.Command(
    name="run",
    callback=_run,
    params=[
        *_kedro_project.run.params,
        click.Option(
            ["--verbose"],
            is_flag=True,
            default=False,
            help=f"Show the traceback of errors in your settings too (or set {TRACEBACK_ENV}=1).",
        ),
    ],
    help=_kedro_project.run.help,
    short_help=_kedro_project.run.short_help,
    context_settings=_kedro_project.run.context_settings,
)
cli.add_command(run)


@cli.command(name="publish")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, help="The Hub model repo, <user or organisation>/<name>.")
@click.option("--private", is_flag=True, default=False, help="Create the repo private.")
@click.option(
    "--token", default=None, help="A write token (default: HF_TOKEN, else `hf auth login`'s)."
)
@click.option(
    "--prune", is_flag=True, default=False, help="Delete the repo's files this folder lacks."
)
@click.option("--message", default=None, help="The commit message.")
@click.option("--dry-run", is_flag=True, default=False, help="Check and list; upload nothing.")
@click.option("--verbose", is_flag=True, default=False, help="Show the traceback of errors too.")
def publish(directory: Path, repo_id: str, verbose: bool, dry_run: bool, **options: Any) -> None:
    """Check a model directory (its card, safetensors only, nothing else) and upload it to the
    Hugging Face Hub (publish.py). DIRECTORY: a model directory, or the versioned folder the
    catalog writes (its latest version)."""
    from vlv_pipeline.publish import publish as upload

    try:
        checked, url = upload(directory, repo_id, dry_run=dry_run, **options)
    except Exception as error:  # noqa: BLE001 - every exception: a message or a bug report
        raise stop(error, verbose) from None
    for note in checked.notes:
        click.echo(f"Note: {note}", err=True)
    if dry_run:
        click.echo(f"{checked.folder}: {len(checked.files)} files would go to {repo_id}:")
        for name in checked.files:
            click.echo(f"  {name}")
        return
    click.echo(f"published {checked.folder} ({len(checked.files)} files) to {repo_id}: {url}")


def _kedro_option(name: str) -> click.Option:
    """``kedro run``'s own option ``name`` (``env``, ``conf_source``, ``params``)."""
    return next(o for o in _kedro_project.run.params if o.name == name)


@cli.command(name="demo")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=7860,
    show_default=True,
    help="The port on 127.0.0.1.",
)
@click.option("--verbose", is_flag=True, default=False, help="Show the traceback of errors too.")
def demo(port: int, verbose: bool, env: str | None, conf_source: Any, params: dict) -> None:
    """Serve the demo page on 127.0.0.1: an uploaded image's caption, its render from its
    stage-1 caption embeddings, and the re-render of its caption, with the latest models of
    the environment (--env; `make run` trains the default world's). --params as `kedro run`'s
    (e.g. caption.model=published)."""
    from vlv_pipeline import demo as page

    install_log_masking(console_quiet=True)
    try:
        page.check_port(port)
        click.echo(f"Loading the models ({env or 'the default environment'})...", err=True)
        models = page.load_models(
            env=env, conf_source=conf_source or None, runtime_params=params or {}
        )
    except Exception as error:  # noqa: BLE001 - every exception: a message or a bug report
        raise stop(error, verbose) from None
    try:
        running = page.serve(models, port=port)
    except OSError as error:  # the port was taken meanwhile
        raise stop(page.port_error(port, error), verbose) from None
    click.echo(f"The demo page: http://{page.HOST}:{port} (Ctrl+C stops it)", err=True)
    running.block_thread()


for _name in ("params", "conf_source", "env"):
    demo.params.insert(0, _kedro_option(_name))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
