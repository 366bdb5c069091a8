"""The project's config loader: Kedro's ``OmegaConfigLoader`` plus the study's derived points,
and the checks on ``--params`` that must run before any work.

- A secret-looking key (``api_key``, ``token``, ``password``...) given with ``--params`` is
  refused at once, its value never shown: secrets come from ``conf/local/credentials.yml``.
- ``--params t2i=<dir or hub id>`` names the T2I model: it is read as ``t2i.model`` (the
  ``params:t2i`` block keeps its other keys), so the one block every stage takes moves.
- A ``--params`` key is one of conf's parameter blocks (``stage1``, ``caption``...) or a key
  conf reads through ``${runtime_params:...}`` (``t2i``); any other top-level key is refused
  before any node runs, listing the keys that exist (a catalog entry such as ``raw_images``
  is set in the catalog, not with ``--params``). Keys inside a block are checked by the
  block's pydantic model (``params/``: unknown keys are errors).
- The credentials' values and secret-keyed ``--params`` values are remembered, so that
  ``masking.mask_secrets`` hides them in every message and log.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from kedro.config import OmegaConfigLoader

from vlv_pipeline.errors import ParameterError, SecretParameterError, UnknownParameterError
from vlv_pipeline.masking import MASK, remember_secrets_in, secret_keys
from vlv_pipeline.param_messages import format_parameter_errors, validation_error_lines
from vlv_pipeline.params.study import DERIVED_KEY, expand_points

# the T2I model's block (params/t2i.py); `--params t2i=X` means `t2i.model=X`
T2I_KEY = "t2i"
# what Kedro's resolver reads: `${runtime_params:<key>,...}` -> <key>
_RUNTIME_REF = re.compile(r"\$\{runtime_params:\s*([^,}]+)")
CREDENTIALS_HINT = (
    "put it in conf/local/credentials.yml (ignored by git), e.g.\n"
    "    captioner:\n"
    "      api_key: ${oc.env:OPENAI_API_KEY}   # or the key itself\n"
    "The catalog entry `captioner_credentials` (src/vlv_pipeline/datasets/credentials.py) "
    "hands it to the node that needs it."
)


def _strings(tree: Any) -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _strings(value)
    elif isinstance(tree, str):
        yield tree


def _dotted(tree: Any, prefix: str) -> list[str]:
    if isinstance(tree, dict) and tree:
        return [k for key, value in tree.items() for k in _dotted(value, f"{prefix}.{key}")]
    return [prefix]


class StudyConfigLoader(OmegaConfigLoader):
    """``parameters`` gain ``study_points.<point>.<section>``: each study point's parameters,
    conf's sections with the point's few overrides (``params/study.py``). Runtime
    ``--params`` are already merged in, so ``--params study.size=small`` shrinks every point.

    ``--params`` are checked first (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        runtime = self.runtime_params or {}
        if T2I_KEY in runtime and not isinstance(runtime[T2I_KEY], dict):
            # `--params t2i=X` would replace the whole block by a string: it names the model
            runtime = {**runtime, T2I_KEY: {"model": runtime[T2I_KEY]}}
            self.runtime_params = runtime
        remember_secrets_in(runtime)
        secrets = secret_keys(runtime)
        if secrets:
            shown = ", ".join(f"`--params {key}={MASK}`" for key in secrets)
            raise SecretParameterError(
                f"{shown}: a secret is not a parameter (nothing was run). On the command line "
                f"it stays in your shell history and in the run's records; {CREDENTIALS_HINT}"
            )
        self._conf_keys: tuple[set[str], set[str], set[str]] | None = None

    def conf_keys(self) -> tuple[set[str], set[str], set[str]]:
        """(conf's top-level parameter keys, the keys conf reads through the runtime_params
        resolver, the catalog's entry names), from the raw files of base and the run's env
        (nothing resolved); three empty sets when conf cannot be read that way."""
        if self._conf_keys is None:
            params: set[str] = set()
            refs: set[str] = set()
            entries: set[str] = set()
            try:
                for key, names in (("parameters", params), ("catalog", entries)):
                    base, env, *_ = self._read_raw_config(key)
                    for conf in (*base.values(), *env.values()):
                        names.update(str(k) for k in conf if not str(k).startswith("_"))
                        for text in _strings(_container(conf)):
                            refs.update(m.strip().split(".")[0] for m in _RUNTIME_REF.findall(text))
            except Exception:  # noqa: BLE001 - a conf source Kedro reads another way: no check
                return set(), set(), set()
            self._conf_keys = (params, refs, entries)
        return self._conf_keys

    def _check_runtime_keys(self) -> None:
        runtime = self.runtime_params or {}
        params, refs, entries = self.conf_keys()
        if not params:
            return
        known = params | refs
        unknown = [key for key in runtime if key not in known]
        if not unknown:
            return
        lines = []
        for key in unknown:
            given = ", ".join(f"`{k}`" for k in _dotted(runtime[key], key))
            if key in entries:
                why = (
                    f"`{key}` is a catalog entry: its settings live in conf/<env>/catalog*.yml "
                    f"(conf/local/catalog.yml overrides them for you)"
                )
            else:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                why = f"did you mean `{close[0]}`?" if close else "no parameter block has it"
            lines.append(f"  - {given}: `{key}` is not a parameter; {why}")
        raise UnknownParameterError(
            "--params names keys that no parameter reads (nothing was run):\n"
            + "\n".join(lines)
            + f"\nThe parameter blocks: {', '.join(sorted(params - {DERIVED_KEY}))}"
            + (f"; and {', '.join(sorted(refs))} (read by conf)" if refs else "")
            + "."
        )

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key == "parameters" and self.runtime_params:
            self._check_runtime_keys()
        config = super().__getitem__(key)
        if key == "credentials":
            remember_secrets_in(config, credentials=True)
        if key != "parameters":
            return config
        try:
            return expand_points(config)
        except ParameterError:
            raise
        except Exception as error:
            from pydantic import ValidationError

            if isinstance(error, ValidationError):
                from vlv_pipeline.params.study import StudyParams

                lines = validation_error_lines("study", error, StudyParams)
                raise ParameterError(format_parameter_errors(lines)) from error
            if isinstance(error, ValueError):
                raise ParameterError(str(error)) from error
            raise


def _container(conf: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(conf, resolve=False)
