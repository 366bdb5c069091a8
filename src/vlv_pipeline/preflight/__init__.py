"""Before any node runs: is every component the chosen pipelines need there?

``PreflightHook`` (settings.py's ``HOOKS``) looks, in ``before_pipeline_run``, at what the run
will need and cannot make itself:

- **datasets**: every free input of the pipeline (a trained model, the image manifest, the
  latent cache, your images...) must exist; a versioned one needs a saved version. The fix
  named is the registered pipeline that writes it (``kedro run --pipeline stage2``), or, for
  a read-only image source, where to put the images.
- **models by parameter**: every ``pretrained:`` of a component and every model key
  (``t2i.model``, ``render_t2i``, ``tokenizer``, ``probe``) of the ``params:``
  blocks the nodes take. An existing local directory passes; a hub id (``owner/name``) must
  be in the local Hugging Face cache (looked up on disk, never on the network); a local-looking
  path that does not exist is missing.
- **credentials**: each key in its own entry of ``conf/local/credentials.yml``: the
  ``openai`` caption backend needs ``captioner.api_key``, Table 2's VLM judge
  (``rating.judge: vlm``) ``judge.api_key``, Table 3's answering LLM (``vqa.source: files``)
  ``answerer.api_key``; a server on this machine (127.0.0.1, localhost) needs none.
- **Table 3's files** (``vqa.source: files``): every dataset's questions and annotations, and
  for shots > 0 the training questions, annotations and COCO captions.
- **the fid_clip judge**: torchmetrics with torch-fidelity, its Inception weights in the torch
  hub cache, and the CLIP model.
- **caption.source** for the ``caption`` pipeline, **reconstruct.source** for ``reconstruct``.
- **evaluate's set and rows**: the COCO files (``evaluate.source: coco``), and what Table 1's
  rows (``evaluate.captioners``) need: the published captioner (``import_published``), an
  api key for an ``openai`` row, a caption file, a local model; an ``optional`` row is not
  checked (the node leaves it out, with a warning, when it cannot be made).
- **what each model was made for**: every model directory the run reads that exists (a VLV
  encoder or captioner) says, in its ``provenance.json`` (``models/provenance.py``; read as
  JSON, never its weights), the T2I model, encoder, image size, queries, embedding width
  and LLM it was made for; one made for another setting than the run's parameters is named
  with what differs and the command that makes the right one. A directory saved before these
  records is judged by what its own configs say. The hook also gives each of those datasets
  the same check for when it loads (``ModelDirectoryDataset.check_provenance_with``), even
  with the preflight switched off.

Offline (``HF_HUB_OFFLINE=1``) every gap stops the run; online, what a download provides is
logged ("will download: ...") and the run goes on, while the rest (trained models, data,
credentials, packages, models made for another setting) still stops it. The stop is one
:class:`MissingComponentsError`, listing each missing piece with what provides it; the
``kedro`` command line prints it as one message, without a traceback. Under ``accelerate
launch`` every rank checks, the ranks agree, every rank stops, and only rank 0 prints.

``VLV_SKIP_PREFLIGHT=1`` turns the check off (not the T2I agreement, nor the loaders'
provenance checks). Nothing here downloads, imports a model, or reads more than a few file
names and small JSON files (records and configs); a run whose components are local
directories that exist (the shapes world) is checked in milliseconds.

The parameter checks know no pipeline's layout: each ``params:<block>`` is validated into the
model its nodes' annotations name, and that model says what it needs (``needs(block)``:
``params/needs.py``'s records); ``parameters.py`` looks for each kind of need.

Modules: ``findings`` (the findings, the message, shared helpers), ``datasets``,
``parameters``, ``provenance``, ``hook`` (``check``, the T2I agreement, the hook).
"""

from vlv_pipeline.preflight.datasets import (
    DATASET_CHOICES,
    OPTIONAL_DATASETS,
    check_datasets,
    written_locations,
)
from vlv_pipeline.preflight.findings import (
    Finding,
    MissingComponentsError,
    Producers,
    hub_cache_problem,
    hub_offline,
    message,
    run_command,
)
from vlv_pipeline.preflight.hook import (
    PreflightHook,
    check,
    unread_params,
)
from vlv_pipeline.preflight.parameters import (
    CREDENTIALS_DATASETS,
    INCEPTION_WEIGHTS,
    PUBLISHED_REPO,
    Reference,
    build_models,
    check_parameters,
    check_references,
    parameter_models,
)
from vlv_pipeline.preflight.provenance import (
    attach_provenance_checks,
    check_provenance,
    provenance_checks,
)

__all__ = [
    "CREDENTIALS_DATASETS",
    "DATASET_CHOICES",
    "INCEPTION_WEIGHTS",
    "OPTIONAL_DATASETS",
    "PUBLISHED_REPO",
    "Finding",
    "MissingComponentsError",
    "PreflightHook",
    "Producers",
    "Reference",
    "attach_provenance_checks",
    "build_models",
    "check",
    "check_datasets",
    "check_parameters",
    "check_provenance",
    "check_references",
    "hub_cache_problem",
    "hub_offline",
    "message",
    "parameter_models",
    "provenance_checks",
    "run_command",
    "unread_params",
    "written_locations",
]
