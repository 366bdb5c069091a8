"""What `kedro run` says when the user got something wrong (issue 26, items 5, 12 and 15).

- A secret on the command line is refused, and never echoed: not on stdout, not on stderr,
  not in the log files (item 5).
- A `--params` key that no parameter block or conf resolver reads is refused before any
  work, with the keys that exist (item 12).
- A user's mistake ends in its message alone, a few lines and no traceback; a bug keeps its
  traceback (item 15).

The `kedro run` subprocesses run in a copy of the project (no data, no conf/local) and all
stop before any node, in about 7 s each.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_end_to_end import copy_project

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))
# shaped like an OpenAI project key, and one shaped like nothing (a password)
SK_KEY = "sk-proj-" + "Zq8vW3tYb1Nc4Rk7Xm2Lp9Hd5Gf6Js0A"
PLAIN_SECRET = "hunter2-correct-horse"
MAX_LINES = 30


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("cli") / "project")
    (root / "conf/local").mkdir()
    # a hook that is a bug (only when VLV_TEST_BUG is set): the CLI must keep its traceback
    with open(root / "src/vlv_pipeline/settings.py", "a") as settings:
        settings.write(
            "\n\nclass _Bug:\n"
            "    @__import__('kedro.framework.hooks').framework.hooks.hook_impl\n"
            "    def before_pipeline_run(self):\n"
            "        raise ZeroDivisionError('an injected bug')\n\n\n"
            "if os.environ.get('VLV_TEST_BUG'):\n"
            "    HOOKS = (*HOOKS, _Bug())\n"
        )
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for name in ("VLV_SKIP_PREFLIGHT", "VLV_TRACEBACK", "VLV_TEST_BUG", "KEDRO_LOGGING_CONFIG"):
        env.pop(name, None)
    return root, env


def _run(project, *args, module=False, **extra_env):
    root, env = project
    command = [sys.executable, "-m", "vlv_pipeline"] if module else [KEDRO, "run"]
    start = time.perf_counter()
    run = subprocess.run(
        [*command, *args],
        cwd=root,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"\n$ {' '.join(args)}  ({time.perf_counter() - start:.1f} s)\n{run.stdout}{run.stderr}")
    return run, run.stdout + run.stderr


def _logs(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*.log"))


def _shows_part_of(secret: str, text: str, skip: int = 0) -> bool:
    """Whether ``text`` holds 5 characters in a row of ``secret`` (after its first ``skip``,
    e.g. the `sk-proj-` every such key starts with): pydantic shortens long values to
    `head...tail`."""
    return any(secret[i : i + 5] in text for i in range(skip, len(secret) - 4))


def _short_message(run, out: str, *pieces: str, before_any_node: bool = True) -> str:
    """The run failed with a message holding ``pieces``, no traceback, in few lines (the
    whole output when it stopped before any node, else the message)."""
    assert run.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "Error: " in run.stderr, out[-3000:]
    message = run.stderr[run.stderr.index("Error: ") :]
    for piece in pieces:
        assert piece in message, message
    assert len((out if before_any_node else message).splitlines()) < MAX_LINES, out
    if before_any_node:
        assert "Running node" not in out
    return message


# --------------------------------------------------------------------------- item 5: secrets


def test_an_api_key_given_with_params_is_refused_and_never_echoed(project):
    key = "synthesize.captioner.openai.api_key"
    run, out = _run(project, "--pipelines", "synthesize", "--params", f"{key}={SK_KEY}")
    message = _short_message(run, out, key, "conf/local/credentials.yml")
    assert "captioner:" in message and "api_key" in message
    assert not _shows_part_of(SK_KEY, out + _logs(project[0]), skip=8)


def test_a_secret_under_another_key_is_masked_everywhere(project):
    """A key-shaped value under a key that is not secret-looking, and a plain password under a
    secret-looking one: neither is printed or logged, though the parameters are refused."""
    run, out = _run(
        project,
        "--pipelines",
        "synthesize",
        "--params",
        f"synthesize.captioner.openai.model={SK_KEY}",
    )
    _short_message(run, out, "synthesize.captioner.openai.base_url")  # missing
    assert not _shows_part_of(SK_KEY, out + _logs(project[0]), skip=8)
    run, out = _run(project, "--pipelines", "synthesize", "--params", f"my_password={PLAIN_SECRET}")
    _short_message(run, out, "my_password")
    assert not _shows_part_of(PLAIN_SECRET, out + _logs(project[0]))


def test_masking_a_text():
    from vlv_pipeline.masking import mask_secrets

    assert SK_KEY not in mask_secrets(f"input_value='{SK_KEY}', input_type=str")
    shortened = "input_value={'model': 'sk-proj-abcdef...vwxyz', 'max_tokens': 0}"
    assert mask_secrets(shortened) == "input_value={'model': '***', 'max_tokens': 0}"
    assert mask_secrets("see https://x.org/a...b and 1...5") == "see https://x.org/a...b and 1...5"
    assert "AIzaSy" not in mask_secrets("key AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW")
    assert mask_secrets("api_key=abc123xyz, steps=5") == "api_key=***, steps=5"
    assert mask_secrets("{'api_key': 'abc123xyz'}") == "{'api_key': '***'}"
    assert mask_secrets("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer ***"
    ordinary = "max_new_tokens=8, tokenizer=src/x, disk-cache sk-1, num_key_value_heads: 2"
    assert mask_secrets(ordinary) == ordinary


def test_the_secrets_filter_masks_records_on_every_root_handler():
    import vlv_pipeline.settings  # noqa: F401 - installs the filter
    from vlv_pipeline.masking import SecretsFilter, install_log_masking, remember_secret

    install_log_masking()
    handlers = logging.getLogger().handlers
    assert handlers and all(any(isinstance(f, SecretsFilter) for f in h.filters) for h in handlers)
    remember_secret(PLAIN_SECRET)
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "bad value %s and %s", (PLAIN_SECRET, SK_KEY), None
    )
    assert SecretsFilter().filter(record)
    assert PLAIN_SECRET not in record.getMessage() and SK_KEY not in record.getMessage()
    assert "bad value" in record.getMessage()


# --------------------------------------------------------------------------- item 12


def test_an_unknown_params_key_is_refused_before_any_work(project):
    run, out = _run(
        project,
        "--pipelines",
        "ingest",
        "--params",
        "raw_images.kind=webdataset,raw_images.path=/nowhere/shards",
    )
    message = _short_message(run, out, "raw_images", "catalog", "stage1", "t2i")
    assert "not a parameter" in message
    assert "Running node" not in out
    assert not (project[0] / "data/02_intermediate").exists()


def test_the_loader_refuses_unknown_keys_and_accepts_resolver_keys(tmp_path):
    from vlv_pipeline.config import StudyConfigLoader
    from vlv_pipeline.errors import UserError

    def loader(runtime):
        return StudyConfigLoader(
            str(ROOT / "conf"),
            env="local",
            runtime_params=runtime,
            base_env="base",
            default_run_env="local",
            merge_strategy={"parameters": "soft"},
        )

    params = loader({"t2i": str(tmp_path), "stage1": {"training": {"steps": 3}}})["parameters"]
    # `--params t2i=<dir>` names the model of the one T2I block (params:t2i)
    assert params["t2i"]["model"] == str(tmp_path) and params["stage1"]["training"]["steps"] == 3
    with pytest.raises(UserError, match=r"(?s)`stag1`.*did you mean `stage1`"):
        loader({"stag1": {"training": {"steps": 3}}})["parameters"]
    with pytest.raises(UserError, match="credentials"):
        loader({"stage2": {"hf_token": "abc"}})


def test_params_a_run_does_not_read_are_named():
    from vlv_pipeline.preflight import unread_params

    inputs = {"params:world", "raw_images", "params:stage1.training"}
    runtime = {"world": {"seed": 1}, "stage1": {"x": 1}, "stage2": {"y": 2}, "t2i": "a"}
    assert unread_params(runtime, inputs, resolver_keys={"t2i"}) == ["stage2"]
    assert unread_params(runtime, {"parameters"}, resolver_keys=set()) == []


# --------------------------------------------------------------------------- item 15


def test_bad_parameter_values_and_keys_end_in_one_short_message(project):
    run, out = _run(
        project,
        "--pipelines",
        "stage1,evaluate,caption",
        "--params",
        "stage1.training.steps=-5,stage1.training.learning_rate=abc,stage1.training.trainig=5,"
        "stage1.trainig.steps=5,caption.sorce=x,evaluate.images=0",
    )
    _short_message(
        run,
        out,
        "stage1.training.steps = -5: Input should be greater than or equal to 1",
        "stage1.training.learning_rate = 'abc': Input should be a valid number",
        "stage1.training.trainig: no such key in stage1.training",
        "stage1.trainig: no such key in stage1 (did you mean `training`?)",
        "caption.sorce: no such key in caption (did you mean `source`?)",
        "evaluate.images = 0",
        "nothing was run",
    )
    assert "errors.pydantic.dev" not in out and "input_type" not in out


def test_python_m_vlv_pipeline_says_the_same(project):
    run, out = _run(
        project, "--pipelines", "stage1", "--params", "stage1.training.steps=-5", module=True
    )
    _short_message(run, out, "stage1.training.steps = -5")


def test_an_empty_caption_folder_ends_in_one_message(project, tmp_path):
    empty = tmp_path / "photos"
    empty.mkdir()
    (empty / "notes.png").write_text("not an image")  # every image rejected
    run, out = _run(
        project,
        "--pipelines",
        "caption",
        "--nodes",  # the copy has no trained captioner: the nodes before it
        "open_user_images,screen_user_images",
        "--params",
        f"caption.source={empty}",
    )
    _short_message(run, out, "kept no images", str(empty), before_any_node=False)


def test_a_bug_keeps_its_traceback(project):
    run, out = _run(project, "--pipelines", "world", VLV_TEST_BUG="1")
    assert run.returncode != 0
    assert "Traceback" in out and "ZeroDivisionError: an injected bug" in out


@pytest.mark.parametrize(
    ("flag", "env", "traceback"),
    [((), {}, False), (("--verbose",), {}, True), ((), {"VLV_TRACEBACK": "1"}, True)],
)
def test_a_user_error_shows_its_traceback_only_when_asked(monkeypatch, flag, env, traceback):
    from click.testing import CliRunner
    from kedro.framework.cli import project as kedro_project

    from vlv_pipeline import cli
    from vlv_pipeline.imaging.screen_table import NoImagesKeptError

    def fails(**kwargs):
        raise NoImagesKeptError("ingest kept no images from folder source 'x'")

    monkeypatch.setattr(kedro_project.run, "callback", fails)
    for name in ("VLV_TRACEBACK",):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.cli, ["run", *flag])
    assert result.exit_code == 1
    assert "Error: ingest kept no images from folder source 'x'" in result.output
    assert ("Traceback" in result.output) is traceback, result.output


def test_a_user_error_a_dataset_raised_is_a_message_too(monkeypatch):
    from click.testing import CliRunner
    from kedro.framework.cli import project as kedro_project
    from kedro.io import DatasetError

    from vlv_pipeline import cli
    from vlv_pipeline.models.published import PublishedCheckpointError

    def fails(**kwargs):
        try:
            raise PublishedCheckpointError("the checkpoint misses 3 weights")
        except PublishedCheckpointError as error:  # what Kedro's load wrapper does
            raise DatasetError("Failed while loading data from dataset x.") from error

    monkeypatch.setattr(kedro_project.run, "callback", fails)
    monkeypatch.delenv("VLV_TRACEBACK", raising=False)
    result = CliRunner().invoke(cli.cli, ["run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: Failed while loading data from dataset x." in result.output


def test_a_warning_names_params_the_run_does_not_read(caplog):
    from vlv_pipeline.preflight import hook as preflight_hook

    class Pipe:
        def inputs(self):
            return {"params:world", "raw_images"}

    class Loader:
        def conf_keys(self):
            return {"world", "stage1"}, {"t2i"}, {"raw_images"}

    run_params = {"runtime_params": {"world": {"seed": 1}, "stage1": {"x": 1}, "t2i": "a"}}
    run_params["pipeline_names"] = ["world"]
    with caplog.at_level(logging.WARNING, logger="vlv_pipeline.preflight"):
        preflight_hook._warn_unread(run_params, Pipe(), Loader())
    assert [r.getMessage() for r in caplog.records] == [
        "--params stage1 has no effect on this run: no node of world reads params:stage1"
    ]


def test_project_errors_that_are_the_users_derive_from_user_error():
    from vlv_pipeline.captioners import CaptionerError
    from vlv_pipeline.datasets.shard_format import CorruptCacheError
    from vlv_pipeline.errors import UserError
    from vlv_pipeline.imaging.screen_table import NoImagesKeptError
    from vlv_pipeline.models.published import PublishedCheckpointError
    from vlv_pipeline.preflight import MissingComponentsError
    from vlv_pipeline.training.loop import TrainingDivergedError

    for error in (
        CaptionerError,
        CorruptCacheError,
        NoImagesKeptError,
        PublishedCheckpointError,
        MissingComponentsError,
        TrainingDivergedError,
    ):
        assert issubclass(error, UserError), error
    assert issubclass(NoImagesKeptError, ValueError)  # callers catching the old base still do
