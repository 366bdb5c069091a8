"""What resuming refuses to read from a ``checkpoint-N`` folder, and the refusals' words.

Nothing in a checkpoint is unpickled as code, unless the user says the engine's own files
may be. ``check_before_loading`` runs before ``accelerator.load_state`` is called (the
loop's resume calls it; Accelerate's load hooks come too late for this: under DeepSpeed and
FSDP the engine has read its files before they run). It

- refuses a checkpoint that holds ``custom_checkpoint_<i>.pkl``: what Accelerate saves for
  an object registered with ``register_for_checkpointing`` and reads back with
  ``weights_only=False``. The loop registers none, so such a file was written by an older
  version (the EMA) or planted; ``convert_ema`` turns an old one into ``ema.safetensors``,
  reading tensors only;
- refuses a checkpoint under an engine that unpickles its own files (DeepSpeed's
  ``pytorch_model/*.pt`` with ``torch.load(weights_only=False)``, Megatron-LM's, FSDP's
  sharded ``.metadata`` with ``pickle.load``), which nothing here can vet, unless the run
  sets ``training.trust_engine_checkpoints: true``;
- reads every ``*.bin``/``*.pt``/``*.pkl`` file of the folder (optimizer, schedule,
  sampler, scaler, every rank's RNG state, FSDP's full state dict) with
  ``torch.load(weights_only=True)``, memory-mapped, and refuses the first that does not
  load that way by name (Accelerate would skip an unreadable RNG file without a word).

Every refusal is a ``CheckpointRefusedError`` that names the file and says what to do
(``resume_from_the_one_before``, ``START_FRESH``).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vlv_pipeline.errors import UserError

# what Accelerate writes for register_for_checkpointing objects, and reads unsafely
PICKLED_CUSTOM = re.compile(r"^custom_checkpoint_\d+\.pkl$")
CONVERT_COMMAND = "python -m vlv_pipeline.training.convert_ema"
START_FRESH = (
    "or start fresh: delete the run folder {run} (or set training.resume: false for this run)"
)


class CheckpointRefusedError(UserError, ValueError):
    """A checkpoint holds something resuming will not read (a pickle, an unreadable file)."""


def resume_from_the_one_before(directory: str | Path) -> str:
    """What to do about a checkpoint folder that cannot be resumed from."""
    directory = Path(directory)
    return (
        f"delete that checkpoint folder ({directory}: the run resumes from the one before), "
        + START_FRESH.format(run=directory.parent)
    )


def pickled_custom_states(directory: str | Path) -> list[str]:
    """Accelerate's pickled ``custom_checkpoint_<i>.pkl`` files in a checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if PICKLED_CUSTOM.match(p.name))


def refuse_pickled_custom_states(directory: str | Path) -> None:
    """Refuse a checkpoint that holds a ``custom_checkpoint_<i>.pkl`` (Accelerate reads it
    with ``weights_only=False``: code in it would run). Only the folder is listed."""
    found = pickled_custom_states(directory)
    if found:
        directory = Path(directory)
        raise CheckpointRefusedError(
            f"checkpoint {directory} holds {', '.join(found)}: a pickle, as Accelerate saved "
            "the EMA state before this version (or a file someone planted). It is not "
            "loaded: unpickling it could run code. If you wrote it, convert it with "
            f"`{CONVERT_COMMAND} {directory.parent}` (it reads tensors only, refuses "
            "anything else, and writes ema.safetensors), then rerun; "
            + START_FRESH.format(run=directory.parent)
        )


# what torch.save writes in a checkpoint folder: Accelerate's optimizer, scheduler, sampler,
# dataloader and scaler states, every rank's RNG state, FSDP's state dicts (all read with
# torch.load(weights_only=True)); custom_checkpoint_<i>.pkl is refused before, unread
TORCH_SUFFIXES = frozenset({".bin", ".pt", ".pkl"})


def torch_loaded_files(directory: str | Path) -> list[Path]:
    """The files of a checkpoint folder (not its subfolders) that resuming reads with
    ``torch.load``: every ``*.bin``, ``*.pt`` and ``*.pkl`` but the custom pickles."""
    return sorted(
        p
        for p in Path(directory).iterdir()
        if p.is_file() and p.suffix in TORCH_SUFFIXES and not PICKLED_CUSTOM.match(p.name)
    )


def refusal_reason(error: BaseException) -> str:
    """The line of torch's ``weights_only`` refusal that says what the file holds (not its
    advice to load it with ``weights_only=False``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "GLOBAL" in line or "nsupported" in line]
    return (telling or [type(error).__name__])[0][:200]


def _first_line(error: BaseException) -> str:
    """The first sentence of an error's message (torch's go on with advice)."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(error).__name__


def _file_error(error: BaseException) -> bool:
    """An OSError about the file itself (missing, not permitted), not about what it holds:
    torch reports a cut-short file as an OSError too (a seek past its end), naming no file."""
    return isinstance(error, OSError) and error.filename is not None


def _load_plain(path: Path) -> None:
    """``torch.load(path, weights_only=True)`` as Accelerate calls it (numpy's RNG types
    allowed), memory-mapped: the pickle is checked, the tensors' bytes are not read."""
    from accelerate.utils import load as accelerate_load

    try:
        accelerate_load(path, map_location="cpu", mmap=True)
    except pickle.UnpicklingError:
        raise
    except Exception:  # not the zip format, or damaged (mapping it fails in other ways)
        accelerate_load(path, map_location="cpu")  # says what is wrong, if anything is


@contextmanager
def refused_unless_plain(
    path: Path, refused: Callable[[str], str], unread: str, what_to_do: str
) -> Iterator[None]:
    """Around a ``torch.load(weights_only=True)`` of ``path``: what it fails on becomes a
    ``CheckpointRefusedError`` naming the file. ``refused(reason)`` is what follows its name
    when ``weights_only`` refused something (``reason``: torch's line that says what); a file
    that does not read as a torch file (cut short, damaged) is said to be so, then
    ``unread`` (what was not done). Both end with ``what_to_do``. An OSError about the file
    itself (missing, not permitted) goes on as it is."""
    try:
        yield
    except pickle.UnpicklingError as error:  # weights_only refused something
        raise CheckpointRefusedError(
            f"{path} {refused(refusal_reason(error))}" + what_to_do
        ) from None
    except Exception as error:  # cut short, or not a torch file at all
        if _file_error(error):
            raise
        raise CheckpointRefusedError(
            f"{path} does not read as a torch file ({_first_line(error)}): it may be cut "
            f"short or damaged; {unread}" + what_to_do
        ) from None


def vet_torch_files(directory: str | Path) -> None:
    """Load every ``torch_loaded_files`` file with ``weights_only=True`` and refuse the
    checkpoint at the first that does not load that way, naming it. Accelerate would read
    the same files the same way (so nothing in them could run), but it skips an RNG file it
    cannot read without a word (the resumed run is then not the run it continues), and
    reports any other as an error that names no file."""
    directory = Path(directory)
    for path in torch_loaded_files(directory):
        with refused_unless_plain(
            path,
            lambda reason: (
                "is not plain tensors: torch.load(weights_only=True) refused it "
                f"({reason}); nothing in it was run; "
            ),
            "",
            resume_from_the_one_before(directory),
        ):
            _load_plain(path)


def engine_reading_pickles(accelerator) -> str | None:
    """What, under ``accelerator``'s backend, reads the engine's own checkpoint files by
    unpickling them inside ``load_state`` (code in them would run, and nothing here can
    vet them: they hold the engine's objects, not plain tensors); None where nothing does."""
    from accelerate.utils import DistributedType

    backend = accelerator.distributed_type
    if backend == DistributedType.DEEPSPEED:
        return "DeepSpeed reads its pytorch_model/*.pt files with torch.load(weights_only=False)"
    if backend == DistributedType.MEGATRON_LM:
        return "Megatron-LM reads its own checkpoint files, which nothing here can vet"
    if backend == DistributedType.FSDP:
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        kind = getattr(plugin, "state_dict_type", None)
        if str(getattr(kind, "name", kind)).upper().endswith("SHARDED_STATE_DICT"):
            return (
                "FSDP with sharded state dicts reads torch.distributed.checkpoint's .metadata "
                "files with pickle.load"
            )
    return None


TRUST_ENGINE = "training.trust_engine_checkpoints: true"


def check_before_loading(directory: str | Path, accelerator, *, trust_engine: bool) -> None:
    """Every check of a checkpoint folder, run before ``accelerator.load_state`` is called
    (its load hooks come too late: under DeepSpeed and FSDP the engine reads its files
    before them). In order: no ``custom_checkpoint_<i>.pkl`` (only the folder is listed);
    no engine that unpickles its own files, unless ``trust_engine``; every torch file loads
    with ``weights_only=True`` (``vet_torch_files``). Each refusal names what it refused."""
    directory = Path(directory)
    refuse_pickled_custom_states(directory)
    engine = engine_reading_pickles(accelerator)
    if engine and not trust_engine:
        raise CheckpointRefusedError(
            f"checkpoint {directory} is not resumed: {engine}, before anything here can check "
            "them, so a file someone planted there would run code. If nobody else can write "
            f"under {directory.parent}, resume it with {TRUST_ENGINE} (the run folder stays "
            "the same); " + START_FRESH.format(run=directory.parent)
        )
    vet_torch_files(directory)
