"""Table 3 (caption-only VQA) through the evaluate pipeline's nodes: the shapes world through
Kedro's runner on conf/base's catalog entries, and the paper's path (official VQA files, an
answering LLM) against a stub OpenAI-compatible server on 127.0.0.1 that answers by rule."""

import contextlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from vlv_pipeline.captioners import CaptionerError
from vlv_pipeline.metrics.tables import PaperTable, table_markdown
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.vqa import VQAParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.evaluate import vqa as nodes
from vlv_pipeline.pipelines.evaluate.nodes import EvalData
from vlv_pipeline.pipelines.evaluate.pipeline import create_pipeline
from vlv_pipeline.world import Vocabulary, caption, sample_scene

ROOT = Path(__file__).resolve().parents[3]
WORLD = WorldParams()
VQA_NODES = ["select_vqa_questions", "draw_vqa_examples", "answer_vqa_questions", "vqa_table"]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- the shapes world


def _shapes_captions(n=12):
    rng = np.random.default_rng(0)
    vocab = Vocabulary.from_params(WORLD)
    references = [caption(sample_scene(rng, vocab, 2, 0.0)) for _ in range(n)]
    ids = [f"img{i:02d}" for i in range(n)]
    captions = pd.DataFrame(
        {
            "image_id": ids,
            "reference": references,
            "vlv": references,  # a perfect captioner
            "without_stage1": [r.replace("red", "blue") for r in references],  # colour-blind
            "chance": references[1:] + references[:1],
        }
    )
    return EvalData(ids, None, references), captions


def _catalog(tmp_path, params: VQAParams):
    """conf/base's catalog (data under tmp_path) with the evaluation inputs in memory."""
    conf = tmp_path / "conf"
    (conf / "local").mkdir(parents=True)
    shutil.copytree(ROOT / "conf/base", conf / "base", ignore=shutil.ignore_patterns("param*"))
    (conf / "base/globals.yml").write_text(f"data: {tmp_path / 'data'}\nt2i: none\n")
    loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")
    return DataCatalog.from_config(loader["catalog"], credentials=loader["credentials"])


def test_shapes_world_table_through_the_catalog(tmp_path):
    data, captions = _shapes_captions()
    params = VQAParams(journal_dir=str(tmp_path / "journal"))
    catalog = _catalog(tmp_path, params)
    catalog["eval_data"] = MemoryDataset(data, copy_mode="assign")
    catalog.save("eval_captions", captions)
    catalog["params:vqa"] = MemoryDataset(params, copy_mode="assign")
    catalog["params:world"] = MemoryDataset(WORLD, copy_mode="assign")
    evaluate = EvaluateParams(render_t2i="t2i")  # the rows' labels
    catalog["params:evaluate"] = MemoryDataset(evaluate, copy_mode="assign")
    pipeline = create_pipeline().only_nodes(*VQA_NODES)
    SequentialRunner().run(pipeline, catalog)

    questions = catalog.load("vqa_questions")  # versioned parquet, list column read back
    assert len(questions) >= 4 * len(data.image_ids)
    assert all(len(a) == 10 for a in questions["answers"])
    answers = catalog.load("vqa_answers")
    assert set(answers["captioner"]) == {"vlv", "without_stage1", "chance", "reference"}
    assert len(answers) == 4 * len(questions) and set(answers["shots"]) == {0}
    table = PaperTable.from_dict(catalog.load("eval_table3"))
    assert table.key == "table3"
    assert [k for k, _ in table.columns] == [
        "colour",
        "shape",
        "count",
        "position",
        "presence",
        "overall",
    ]
    assert [r.label for r in table.rows][0] == "VLV captioner"  # the model's row first
    vlv, reference = table.row("VLV captioner"), table.row("reference captions (upper bound)")
    assert vlv.kind == "model" and reference.kind == "reference"
    assert vlv.values["overall"] == 100.0 and reference.values == vlv.values
    assert vlv.count["overall"] == len(questions)
    chance = table.row("chance (another image's reference caption)")
    assert chance.values["overall"] < 80
    low, high = chance.intervals["overall"]
    assert low < chance.values["overall"] < high
    # a colour-blind captioner (red read as blue) loses colour answers, not counts
    blind = table.row('"without stage 1"')
    assert blind.values["colour"] < 100 and blind.values["count"] == 100
    assert not [r for r in table.rows if r.kind == "paper"]
    assert "not an LLM" in table.notes[0] and "58.55" in table.notes[2]
    assert "| **VLV captioner** | 100.00 [100.00, 100.00]" in table_markdown(table)
    examples = catalog.load("vqa_examples")
    assert examples["datasets"] == {} and "no examples" in examples["note"]


def test_shapes_world_needs_shapes_world_references():
    data = EvalData(["a", "b"], None, ["a large red circle at the top", "a photo of a cat"])
    with pytest.raises(Exception, match=r"vqa.source shapes .*image 1 .*a photo of a cat"):
        nodes.select_vqa_questions(data, VQAParams(), WORLD)


def test_max_questions_caps_the_shapes_questions():
    data, _ = _shapes_captions()
    questions = nodes.select_vqa_questions(data, VQAParams(max_questions=7), WORLD)
    assert len(questions) == 7


# ---------------------------------------------------------------- the paper's path

COLOURS = ("red", "blue", "green", "yellow")
# (coco id, question id, question, ten answers); the reference caption says what answers them
VAL = [
    (1, 10, "What color is the bus?", ["red"] * 10),
    (1, 11, "Is it raining?", ["yes"] * 9 + ["no"]),
    (2, 20, "What color is the bus?", ["blue"] * 8 + ["green"] * 2),
    (2, 21, "What sport is this?", ["tennis"] * 10),
    (3, 30, "Is it raining?", ["no"] * 10),
    (3, 31, "Describe the scene?", ["busy street"] * 10),  # the stub answers in two lines
    (4, 40, "What color is the bus?", ["yellow"] * 10),  # not in the evaluation set
]
REFERENCES = {
    "1": "a red bus in the rain",
    "2": "a blue bus beside a tennis court",
    "3": "a green bus on a dry day",
}


def _write(path: Path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def _vqa_files(folder: Path, items, split: str) -> tuple[str, str]:
    questions = {
        "questions": [{"image_id": i, "question_id": q, "question": t} for i, q, t, _ in items]
    }
    annotations = {
        "annotations": [
            {
                "image_id": i,
                "question_id": q,
                "question_type": "what",
                "answer_type": "other",
                "multiple_choice_answer": a[0],
                "answers": [{"answer": x, "answer_id": n + 1} for n, x in enumerate(a)],
            }
            for i, q, _, a in items
        ]
    }
    return (
        _write(folder / f"questions_{split}.json", questions),
        _write(folder / f"annotations_{split}.json", annotations),
    )


def _files_params(tmp_path: Path, base_url: str, **changes) -> VQAParams:
    train = [
        (100 + i, 1000 + i, f"What color is thing {i}?", [COLOURS[i % 4]] * 10) for i in range(6)
    ]
    val_q, val_a = _vqa_files(tmp_path, VAL, "val2014")
    train_q, train_a = _vqa_files(tmp_path, train, "train2014")
    captions = {
        "annotations": [
            {"image_id": 100 + i, "id": i, "caption": f"a {COLOURS[i % 4]} thing number {i}"}
            for i in range(6)
        ]
    }
    values = dict(
        source="files",
        shots=[0, 4],
        datasets=[
            dict(
                name="vqav2",
                questions=val_q,
                annotations=val_a,
                train_questions=train_q,
                train_annotations=train_a,
                train_captions=_write(tmp_path / "captions_train2014.json", captions),
            )
        ],
        answerer=dict(
            base_url=base_url,
            model="stub-llm",
            max_concurrency=2,
            timeout_s=5,
            deadline_s=10,
            max_retries=0,
            backoff_s=0,
            bad_answer_attempts=2,
            stop_after_first_failures=0,
        ),
        journal_dir=str(tmp_path / "journal"),
        max_failed_fraction=0.5,
    )
    values.update(changes)
    return VQAParams(**values)


def rule_answer(prompt: str) -> str:
    """The stub LLM: reads only the last description and question of the prompt."""
    block = prompt.rsplit("\n\n", 1)[-1]
    description = re.search(r"Description: (.*)\n", block).group(1)
    question = re.search(r"Question: (.*)\n", block).group(1).lower()
    if "color" in question:
        return next((c for c in COLOURS if c in description), "unknown").capitalize() + "."
    if "raining" in question:
        return "Answer: yes" if "rain" in description else "no"
    if "sport" in question:
        return '"tennis"' if "tennis" in description else "soccer"
    return "A busy street.\nWith a bus."  # two lines: an unusable answer


class StubLLM:
    def __init__(self):
        self.prompts: list[str] = []
        self.bodies: list[dict] = []
        self.refuse_after: int | None = None  # then HTTP 401, as for a bad key
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.stub = self
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        stub: StubLLM = self.server.stub
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with stub.lock:
            refused = stub.refuse_after is not None and len(stub.prompts) >= stub.refuse_after
            if not refused:
                stub.bodies.append(body)
                stub.prompts.append(body["messages"][0]["content"])
        if refused:
            status, payload = 401, {"error": {"message": "invalid api key"}}
        else:
            text = rule_answer(body["messages"][0]["content"])
            status, payload = 200, {"choices": [{"message": {"content": text}}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = StubLLM()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    with contextlib.ExitStack() as stack:
        stack.callback(thread.join, 5)
        stack.callback(server.httpd.server_close)
        stack.callback(server.httpd.shutdown)
        yield server


def _eval_inputs():
    ids = ["1", "2", "3"]  # COCO ids, as the evaluation set writes them
    references = [REFERENCES[i] for i in ids]
    captions = pd.DataFrame(
        {
            "image_id": ids,
            "reference": references,
            "vlv": references,
            "chance": references[1:] + references[:1],
        }
    )
    return EvalData(ids, None, references), captions


def _run(params, stub_credentials=None):
    data, captions = _eval_inputs()
    questions = nodes.select_vqa_questions(data, params, WORLD)
    examples = nodes.draw_vqa_examples(params)
    answers = nodes.answer_vqa_questions(
        questions, examples, captions, stub_credentials or {}, params, WORLD
    )
    return questions, examples, answers, nodes.vqa_table(answers, examples, params)


def test_files_path_against_a_stub_llm(tmp_path, stub):
    params = _files_params(tmp_path, stub.base_url)
    questions, examples, answers, table = _run(params, {"api_key": "sk-test-KEY-0123456789"})
    # only the questions about evaluation images; every prompt asked once: the same caption
    # and question (vlv's and reference's; chance's, when it is another image's reference
    # with the same question) make one prompt. An unusable answer is asked twice.
    assert sorted(questions["question_id"]) == ["10", "11", "20", "21", "30", "31"]
    assert len(answers) == 6 * 3 * 2  # questions x captioners x shots
    _, captions = _eval_inputs()
    texts = captions.set_index("image_id")
    pairs = {
        (texts.loc[i, c], q)
        for i, q in zip(questions["image_id"], questions["question"], strict=True)
        for c in ("vlv", "chance", "reference")
    }
    unique = set(stub.prompts)
    assert len(unique) == 2 * len(pairs) == 20
    # "describe the scene" (image 3: its own caption and chance's, two shot counts) twice
    assert len(stub.prompts) == len(unique) + 4
    assert all(b["temperature"] == 0.0 and b["model"] == "stub-llm" for b in stub.bodies)
    assert all(isinstance(b["messages"][0]["content"], str) for b in stub.bodies)  # text only
    # the prompt: the caption in the image's place, k examples for k shots, fixed by seed
    drawn = examples["datasets"]["vqav2"]
    assert len(drawn) == 4 and examples["seed"] == 0
    four = [p for p in unique if p.count("Description:") == 5]
    assert four and all(drawn[0]["caption"] in p for p in four)
    assert any(
        "Description: a red bus in the rain\nQuestion: What color is the bus?" in p for p in unique
    )
    # strict parsing: "Red." -> red, "Answer: yes" -> yes, '"tennis"' -> tennis
    vlv = answers[(answers["captioner"] == "vlv") & (answers["shots"] == 0)].set_index(
        "question_id"
    )
    assert vlv.loc["10", "answer"] == "Red" and vlv.loc["10", "accuracy"] == 1.0
    assert vlv.loc["11", "answer"] == "yes" and vlv.loc["11", "accuracy"] == 1.0
    assert vlv.loc["21", "answer"] == "tennis"
    assert vlv.loc["30", "answer"] == "no"
    assert vlv.loc["20", "accuracy"] == 1.0  # "blue": 8 of 10 annotators
    assert vlv.loc["31", "status"] == "failed" and vlv.loc["31", "accuracy"] == 0.0
    # the table: dataset x shots, the run's rows, the paper's VLV row on the same columns
    table = PaperTable.from_dict(table)
    assert table.columns == [("vqav2_0", "VQAv2 0-shot"), ("vqav2_4", "VQAv2 4-shot")]
    row = table.row("VLV captioner")
    assert row.values["vqav2_0"] == pytest.approx(100 * 5 / 6) and row.count["vqav2_0"] == 6
    assert (
        table.row("chance (another image's reference caption)").values["vqav2_0"]
        < row.values["vqav2_0"]
    )
    assert table.row("VLV").kind == "paper"
    assert table.row("VLV").values == {"vqav2_0": 58.55, "vqav2_4": 61.72}
    assert any("answers failed" in n for n in table.notes)
    # the journal: a rerun asks nothing again
    asked = len(stub.prompts)
    _, _, again, _ = _run(params)
    assert len(stub.prompts) == asked
    pd.testing.assert_frame_equal(again, answers)
    journal = next(Path(params.journal_dir).glob("answers-stub-llm-*.jsonl"))
    assert "sk-test-KEY" not in journal.read_text()


def test_a_killed_run_never_asks_twice(tmp_path, stub):
    params = _files_params(tmp_path, stub.base_url)
    stub.refuse_after = 5  # then every request is refused as a bad key: the run stops
    with pytest.raises(CaptionerError) as error:
        _run(params)
    message = str(error.value)
    assert message.startswith("vqa answerer: prompt ") and "HTTP 401" in message
    assert "credentials.yml (under `answerer:`)" in message and "synthesize" not in message
    assert "answers made so far are kept" in message
    first = list(stub.prompts)
    assert len(first) == 5
    stub.refuse_after = None
    _run(params)
    answered_first = {p for p in first if "Describe the scene" not in p}
    again = stub.prompts[5:]
    assert not answered_first & set(again)  # what was answered is never asked again
    assert set(first) | set(again) == set(stub.prompts)


def test_failed_prompts_are_asked_again_only_when_told(tmp_path, stub):
    params = _files_params(tmp_path, stub.base_url)
    _run(params)
    asked = len(stub.prompts)
    _run(params)
    assert len(stub.prompts) == asked  # the failed ones are skipped
    _run(params.model_copy(update={"retry_failed": True}))
    assert len(stub.prompts) == asked + 4 * 2  # four failed prompts, two tries each


def test_too_many_failures_stop_the_run(tmp_path, stub):
    params = _files_params(tmp_path, stub.base_url, max_failed_fraction=0.0)
    with pytest.raises(CaptionerError, match=r"of 20 prompts got no usable answer") as info:
        _run(params)
    # the first failure stops the asking; how many of the stub's four failing prompts were
    # already in flight by then depends on the threads' timing (two at a time)
    lost = int(re.search(r"(\d+) of 20 prompts", str(info.value)).group(1))
    assert 1 <= lost <= 4


def test_files_need_the_evaluation_images_to_be_coco_images(tmp_path, stub):
    params = _files_params(tmp_path, stub.base_url)
    data = EvalData(["ab12cd", "ef34ab"], None, ["x", "y"])
    with pytest.raises(Exception, match="none of the 2 evaluation images has a question"):
        nodes.select_vqa_questions(data, params, WORLD)


def test_files_params_say_what_is_missing():
    with pytest.raises(ValueError, match="needs an `answerer:` block"):
        VQAParams(source="files", datasets=[dict(name="vqav2", questions="q", annotations="a")])
    with pytest.raises(ValueError, match=r"shots \[0, 4, 32\] need train_questions"):
        VQAParams(
            source="files",
            datasets=[dict(name="vqav2", questions="q", annotations="a")],
            answerer=dict(base_url="http://127.0.0.1:1/v1", model="m"),
        )
    VQAParams(
        source="files",
        shots=[0],
        datasets=[dict(name="vqav2", questions="q", annotations="a")],
        answerer=dict(base_url="http://127.0.0.1:1/v1", model="m"),
    )


@pytest.mark.parametrize("env", ["base", "paper", "rehearsal"])
def test_every_environment_has_a_valid_vqa_block(env):
    from vlv_pipeline import settings

    args = {k: v for k, v in settings.CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    args["default_run_env"] = "local" if env == "base" else env
    params = VQAParams(**OmegaConfigLoader(str(ROOT / "conf"), **args)["parameters"]["vqa"])
    if env == "paper":  # the paper's Table 3: both datasets, DeepSeek-V3, 0/4/32 shots
        assert params.source == "files" and params.shots == [0, 4, 32]
        assert [d.name for d in params.datasets] == ["vqav2", "okvqa"]
        assert params.answerer.model == "deepseek-chat"
        assert params.journal_dir.startswith("data/paper/")
    else:  # the shapes world's questions, answered by the parser
        assert params.source == "shapes"
