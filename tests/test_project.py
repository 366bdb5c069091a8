"""The Kedro project as a user meets it: pipelines, environments, parameter checks."""

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from vlv_pipeline import settings
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.stage2 import Stage2Params
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipeline_registry import register_pipelines

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipelines():
    configure_project("vlv_pipeline")
    return register_pipelines()


def _loader(env: str) -> OmegaConfigLoader:
    return OmegaConfigLoader(str(ROOT / "conf"), env=env, **settings.CONFIG_LOADER_ARGS)


def test_pipelines_are_registered(pipelines):
    assert {"__default__", "world", "ingest", "teacher", "vlv"} <= set(pipelines)
    default = {n.name for n in pipelines["__default__"].nodes}
    assert {n.name for n in pipelines["world"].nodes} <= default
    assert (
        not {n.name for n in pipelines["teacher"].nodes} & default
    )  # teacher runs only when named
    assert not {n.name for n in pipelines["world"].nodes} & {n.name for n in pipelines["vlv"].nodes}


def test_composed_pipelines_load_when_the_command_line_names_them():
    """`kedro run --pipeline vlv` asks Kedro's lazy registry for `vlv` only; it is made of
    several packages, so the registry must still find them all."""
    from kedro.framework.project import pipelines as registry

    configure_project("vlv_pipeline")
    registry.set_requested(["vlv"])
    try:
        assert {n.name for n in registry["vlv"].nodes} >= {"train_stage1", "train_stage2"}
    finally:
        registry.set_requested(None)


def test_default_runs_the_world_before_ingest(pipelines):
    order = [n.name for n in pipelines["__default__"].nodes]
    assert order.index("render_world_images") < order.index("screen_images")


def test_paper_env_overrides_only_the_keys_it_names():
    base = _loader("base")["parameters"]
    paper = _loader("paper")["parameters"]
    assert paper["ingest"]["resolution"] == 384
    assert paper["ingest"]["splits"] == base["ingest"]["splits"]  # kept from base
    assert paper["world"] == base["world"]
    IngestParams(**paper["ingest"])
    assert paper["cache"]["vae"] is None  # the T2I model's VAE
    assert paper["t2i"]["model"] == "stabilityai/stable-diffusion-2-1-base"
    assert paper["cache"]["shard_size"] == base["cache"]["shard_size"]
    stage1 = Stage1Params(**paper["stage1"])
    assert (stage1.encoder.backbone, stage1.encoder.num_queries, stage1.resolution) == (
        "florence2",
        77,
        384,
    )
    assert stage1.training.betas == (0.9, 0.99) and stage1.training.weight_decay == 0.01
    assert stage1.training.num_workers == 8  # GPU nodes decode shards in worker processes
    assert stage1.training.batch_size * stage1.training.gradient_accumulation == 512
    assert stage1.timestep_range is None and stage1.diversity_weight == 0.0  # the paper's loss
    stage2 = Stage2Params(**paper["stage2"])
    assert (stage2.llm.pretrained, stage2.llm.init) == ("Qwen/Qwen2.5-3B", None)
    assert (stage2.tokenizer.pretrained, stage2.tokenizer.subfolder) == ("Qwen/Qwen2.5-3B", None)
    assert (stage2.max_caption_tokens, stage2.training.learning_rate) == (300, 1e-5)
    assert stage2.training.mixed_precision == "bf16" and stage2.generation.num_beams == 4
    assert stage2.training.batch_size * stage2.training.gradient_accumulation == 64
    assert SynthesizeParams(**paper["synthesize"]).captioner.backend == "openai"
    catalog = _loader("paper")["catalog"]
    assert catalog["raw_images"]["kind"] == "webdataset"
    assert "writable" not in catalog["raw_images"]


def test_rehearsal_env_validates_and_writes_apart_from_the_default_run():
    from vlv_pipeline.params.evaluate import EvaluateParams
    from vlv_pipeline.params.rehearsal import RehearsalParams

    params = _loader("rehearsal")["parameters"]
    for model, key in (
        (WorldParams, "world"),
        (IngestParams, "ingest"),
        (CacheParams, "cache"),
        (Stage1Params, "stage1"),
        (SynthesizeParams, "synthesize"),
        (Stage2Params, "stage2"),
        (EvaluateParams, "evaluate"),
        (RehearsalParams, "rehearsal"),
    ):
        model(**params[key])
    assert params["stage1"]["checkpoint_dir"].startswith("data/rehearsal/")
    assert params["t2i"]["model"] == "data/rehearsal/06_models/t2i"
    catalog = _loader("rehearsal")["catalog"]
    paths = {
        k: v.get("filepath") or v.get("path") for k, v in catalog.items() if isinstance(v, dict)
    }
    # the package's shipped models are read, never written (no node outputs them)
    shipped = {k for k, p in paths.items() if p and p.startswith("src/vlv_pipeline/assets/")}
    assert shipped == {"shipped_teacher_vae", "shipped_probe"}
    assert all(p.startswith("data/rehearsal/") for k, p in paths.items() if p and k not in shipped)
    assert catalog["raw_images"]["kind"] == "webdataset" and catalog["raw_images"]["writable"]
    assert _loader("base")["catalog"]["latent_cache"]["path"] == "data/04_feature/latent_cache"


def test_a_bad_parameter_fails_before_any_work_naming_the_key(tmp_path, monkeypatch):
    bootstrap_project(ROOT)
    monkeypatch.chdir(ROOT)
    with KedroSession.create(
        project_path=ROOT, runtime_params={"world": {"image_sise": 40}}
    ) as session:
        with pytest.raises(Exception, match=r"(?s)world.*image_sise") as error:
            session.run(pipeline_name="world")
    assert "Extra inputs are not permitted" in str(error.value)


def test_example_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {
        path.stem: ClusterConfig.from_yaml_file(str(path)).distributed_type.value
        for path in (ROOT / "conf/accelerate").glob("*.yaml")
    }
    assert kinds == {
        "cpu_2proc": "MULTI_GPU",
        "multi_gpu": "MULTI_GPU",
        "multi_node": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
        "fsdp": "FSDP",
    }


def test_each_pipeline_package_imports_only_its_own_modules():
    """Code that several pipelines use lives in the library packages (models/, datasets/,
    imaging/, world/): a pipeline's files import no other pipeline's package."""
    import ast

    root = Path(__file__).resolve().parents[1] / "src/vlv_pipeline/pipelines"
    crossing = []
    for path in sorted(root.glob("*/*.py")):
        own = f"vlv_pipeline.pipelines.{path.parent.name}"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("vlv_pipeline.pipelines.") and not (
                    name == own or name.startswith(own + ".")
                ):
                    crossing.append(f"{path.relative_to(root)}: {name}")
    assert not crossing, crossing


# The package's floors, ground first. A module imports only from its own unit (a subpackage
# or a top-level module) and from units on lower floors, never from its own floor or above:
# no import runs upward and no two units import each other.
FLOORS = (
    ("errors",),
    ("files", "masking"),
    ("params",),  # plain pydantic: the project's vocabulary
    ("param_messages", "distributed"),
    ("imaging", "hooks"),
    ("world",),
    ("metrics",),
    ("models",),
    ("inference", "datasets"),
    ("tracking", "captioners", "publish"),
    ("training", "benchmarks"),
    ("pipelines",),
    ("preflight", "demo", "config"),
    ("settings", "cli", "pipeline_registry"),
    ("__main__", "__init__"),  # the entry points: ``python -m`` and the package's facade
)


def _unit_imports(path: Path, package: Path) -> set[str]:
    """The project units (``params``, ``models``, ``cli`` ...) ``path`` imports anywhere in
    it, function bodies included."""
    import ast

    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "vlv_pipeline":
            names = [f"vlv_pipeline.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vlv_pipeline" and len(parts) > 1:
                is_unit = (package / parts[1]).is_dir() or (package / f"{parts[1]}.py").exists()
                units.add(parts[1] if is_unit else "__init__")
    return units


def test_no_import_runs_upward_and_no_package_cycle():
    package = Path(__file__).resolve().parents[1] / "src/vlv_pipeline"
    floor = {unit: level for level, units in enumerate(FLOORS) for unit in units}
    found = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in package.glob("*.py")}
    assert found == set(floor), f"give each unit a floor in FLOORS: {found ^ set(floor)}"
    upward = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        unit = parts[0] if len(parts) > 1 else path.stem
        for target in _unit_imports(path, package) - {unit}:
            if floor[target] >= floor[unit]:
                upward.append(f"{path.relative_to(package)} ({unit}) imports {target}")
    assert not upward, "\n".join(upward)


def test_no_module_under_src_is_over_500_lines():
    package = Path(__file__).resolve().parents[1] / "src/vlv_pipeline"
    long = {
        str(path.relative_to(package)): n
        for path in package.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, f"split these along their seams (README: Architecture): {long}"


# The paper path's modules whose imports the default install does not cover: judge fid_clip
# (evaluate's FID and CLIP score, its re-render rows, reconstruct's FID on large folders)
# and the preflight check that names what fid_clip needs before a run starts.
PAPER_MODULES = (
    "src/vlv_pipeline/pipelines/evaluate/scoring.py",
    "src/vlv_pipeline/pipelines/evaluate/rerender.py",
    "src/vlv_pipeline/pipelines/reconstruct/nodes.py",
    "src/vlv_pipeline/preflight/parameters.py",
)
# distribution name -> the import name it provides (checked against the installed
# distribution's files where it is installed)
IMPORT_NAMES = {"torchmetrics": "torchmetrics", "torch-fidelity": "torch_fidelity"}
# Accelerate config distributed_type -> the package Accelerate imports to run it
ENGINE_IMPORTS = {"DEEPSPEED": ("deepspeed", "deepspeed")}


def _requirement_name(text: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(text).name.lower().replace("_", "-")


def _default_distributions(requirements: list[str]) -> set[str]:
    """The distributions a default install brings: pyproject's dependencies and, through
    the installed packages' metadata, everything they require (extras followed)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = requirement.name.lower().replace("_", "-")
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            needs = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for text in needs:
            sub = Requirement(text)
            if sub.marker is None:
                todo.append((sub, ""))
            for wanted in requirement.extras or [""]:
                if sub.marker is not None:
                    todo.append((sub, wanted))
    return {key.split("[")[0] for key in seen}


def _imports(path: Path) -> set[str]:
    """Top-level names a module imports (at any depth) or asks ``find_spec`` about."""
    import ast

    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp):
            asks = any(
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "find_spec"
                for call in ast.walk(node)
            )
            for generator in node.generators if asks else ():
                if isinstance(generator.iter, ast.Tuple | ast.List):
                    names |= {
                        item.value
                        for item in generator.iter.elts
                        if isinstance(item, ast.Constant) and isinstance(item.value, str)
                    }
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "find_spec"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_the_paper_extra_installs_what_the_paper_path_imports_beyond_the_default():
    """pyproject's [paper] extra = the import names the paper path's modules use that the
    default install does not provide, plus the engine a shipped Accelerate config names."""
    import sys
    import tomllib
    from importlib import metadata

    from accelerate.commands.config.config_args import ClusterConfig

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = [_requirement_name(text) for text in project["optional-dependencies"]["paper"]]
    imports = dict(IMPORT_NAMES, **dict(ENGINE_IMPORTS.values()))
    assert set(extra) <= set(imports), f"say which import name {set(extra) - set(imports)} gives"
    installed = metadata.packages_distributions()
    for distribution, name in imports.items():
        if distribution in extra and name in installed:  # installed here: its files agree
            provided = {d.lower().replace("_", "-") for d in installed[name]}
            assert distribution in provided, (distribution, name, installed[name])

    default = _default_distributions(project["dependencies"])
    wanted: dict[str, str] = {}
    for module in PAPER_MODULES:
        for name in _imports(ROOT / module):
            if name in sys.stdlib_module_names or name in {"__future__", "vlv_pipeline"}:
                continue
            providers = {d.lower().replace("_", "-") for d in installed.get(name, [])}
            if not providers & default:
                wanted.setdefault(name, module)
    engines = {
        ClusterConfig.from_yaml_file(str(path)).distributed_type.value
        for path in (ROOT / "conf/accelerate").glob("*.yaml")
    }
    for engine, (_, name) in ENGINE_IMPORTS.items():
        if engine in engines:
            wanted.setdefault(name, f"conf/accelerate ({engine})")

    assert sorted(imports[d] for d in extra) == sorted(wanted), wanted
    assert set(wanted) == {"torchmetrics", "torch_fidelity", "deepspeed"}  # as of issue 29


def _parameter_models(pipelines) -> dict[str, type]:
    """``params:<key>`` -> the pydantic model its nodes declare for it (their annotations),
    over every registered pipeline's nodes."""
    import inspect
    import typing

    from pydantic import BaseModel

    models: dict[str, type] = {}
    for pipeline in pipelines.values():
        for node in pipeline.nodes:
            func = node.func
            hints = typing.get_type_hints(func)
            names = list(inspect.signature(func).parameters)
            inputs = node._inputs
            pairs = (
                inputs.items()
                if isinstance(inputs, dict)
                else zip(names, node.inputs, strict=False)
            )
            for arg, dataset in pairs:
                hint = hints.get(arg)
                if (
                    isinstance(dataset, str)
                    and dataset.startswith("params:")
                    and isinstance(hint, type)
                    and issubclass(hint, BaseModel)
                ):
                    models[dataset.removeprefix("params:")] = hint
    return models


@pytest.mark.parametrize("env", ["base", "paper", "rehearsal"])
def test_every_typed_parameter_block_validates_in_every_environment(env, pipelines):
    """Each block a node reads as a pydantic model, from each environment's conf (the study's
    derived points included), built the way Kedro builds it."""
    params = _loader(env)["parameters"]
    if "study" in params:
        from vlv_pipeline.params.study import expand_points

        params = expand_points(params)
    models = _parameter_models(pipelines)
    assert {"world", "t2i", "stage1", "stage2", "teacher", "teacher_flow", "study"} <= set(models)
    built, missing = {}, set()
    for key, model in models.items():
        if key.split(".")[0] not in params:
            missing.add(key)
            continue
        value = params
        for part in key.split("."):
            value = value[part]
        built[key] = model(**value)
    # only the rehearsal pipeline's own block lives in its environment alone
    assert missing == (set() if env == "rehearsal" else {"rehearsal"})
    # what each environment says, read back through its models
    # the one T2I block every stage takes (tests/test_t2i_named_once.py)
    if env == "base":
        assert built["t2i"].model == "src/vlv_pipeline/assets/teacher"
        flow = built["teacher_flow"]
        assert (
            flow.transformer.init["joint_attention_dim"]
            == 2 * flow.text_encoder.init["hidden_size"]
        )
        assert built["study_points.teacher_flow.t2i"].model.endswith("assets/teacher_flow")
    if env == "paper":
        assert built["t2i"].model == "stabilityai/stable-diffusion-2-1-base"
