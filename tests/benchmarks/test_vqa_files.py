"""Readers of the official VQA files (VQAv2, OK-VQA layout) and COCO captions, on small files
the tests write in the same layout."""

import json

import pytest

from vlv_pipeline.benchmarks.vqa import (
    QUESTION_COLUMNS,
    build_prompt,
    coco_image_id,
    draw_examples,
    load_annotations,
    load_coco_captions,
    load_questions,
    load_vqa,
    questions_for_images,
)
from vlv_pipeline.errors import InputError, MissingInputError


def write_vqa(folder, items, *, split="val2014", mc=True):
    """``items``: (question_id, image_id, question, [ten answers]) -> the two files' paths."""
    questions = {
        "info": {},
        "data_subtype": split,
        "questions": [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, _ in items],
    }
    annotations = {
        "data_subtype": split,
        "annotations": [
            {
                "question_id": qid,
                "image_id": i,
                "question_type": "what color is the",
                "answer_type": "other",
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                    for n, a in enumerate(answers)
                ],
                **({"multiple_choice_answer": answers[-1]} if mc else {}),
            }
            for qid, i, _, answers in items
        ],
    }
    q, a = folder / f"questions_{split}.json", folder / f"annotations_{split}.json"
    q.write_text(json.dumps(questions))
    a.write_text(json.dumps(annotations))
    return q, a


ITEMS = [
    (10, 1, "What color is the bus?", ["red"] * 9 + ["blue"]),
    (11, 1, "How many people?", ["2"] * 10),
    (20, 2, "Is it raining?", ["no"] * 10),
    (30, 3, "What sport is this?", ["tennis"] * 10),
]


def test_questions_and_annotations_join(tmp_path):
    q, a = write_vqa(tmp_path, ITEMS)
    table = load_vqa(q, a)
    assert table["question_id"].tolist() == [10, 11, 20, 30]
    assert table.loc[0, "answers"] == ["red"] * 9 + ["blue"]
    assert table.loc[0, "answer"] == "blue"  # multiple_choice_answer when given
    assert set(table.columns) >= {"question", "question_type", "answer_type"}


def test_the_example_answer_without_multiple_choice_is_the_commonest(tmp_path):
    q, a = write_vqa(tmp_path, ITEMS, mc=False)  # OK-VQA's annotations may lack it
    assert load_annotations(a).loc[0, "answer"] == "red"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("questions"), r"has no list 'questions' at its top level"),
        (lambda d: d["questions"][1].pop("image_id"), r"questions\[1\] has no 'image_id'"),
        (
            lambda d: d["questions"][2].update(question_id="20"),
            r"questions\[2\]\.question_id is '20', not an int",
        ),
        (lambda d: d["questions"][0].update(question="  "), r"questions\[0\]\.question is"),
        (
            lambda d: d["questions"].append(dict(d["questions"][0])),
            "question_id 10 appears more than once",
        ),
    ],
)
def test_a_bad_questions_file_is_named_with_its_entry_and_key(tmp_path, mutate, message):
    q, _ = write_vqa(tmp_path, ITEMS)
    data = json.loads(q.read_text())
    mutate(data)
    q.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as error:
        load_questions(q)
    assert str(q) in str(error.value)


def test_a_bad_annotations_file_is_named_with_its_entry_and_key(tmp_path):
    _, a = write_vqa(tmp_path, ITEMS)
    data = json.loads(a.read_text())
    data["annotations"][3]["answers"][4] = {"answer_id": 5}
    a.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"annotations\[3\]\.answers\[4\] has no 'answer'"):
        load_annotations(a)
    data["annotations"][3]["answers"] = []
    a.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"annotations\[3\]\.answers is empty"):
        load_annotations(a)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MissingInputError, match="questions file .*nowhere.json is not there"):
        load_questions(tmp_path / "nowhere.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json is not a JSON file"):
        load_questions(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InputError, match="holds a list, not an object"):
        load_annotations(tmp_path / "list.json")


def test_a_file_over_the_cap_or_not_a_file_is_refused_unread(tmp_path, monkeypatch):
    import vlv_pipeline.benchmarks.vqa as vqa

    q, _ = write_vqa(tmp_path, ITEMS)
    monkeypatch.setattr(vqa, "MAX_FILE_BYTES", 100)
    with pytest.raises(InputError, match=r"questions file .* not read \(too_large"):
        load_questions(q)
    with pytest.raises(InputError, match=r"not read \(not_a_file"):
        load_questions(tmp_path)


def test_files_of_different_splits_do_not_join(tmp_path):
    q, _ = write_vqa(tmp_path, ITEMS)
    _, a = write_vqa(tmp_path, [(10, 1, "x", ["y"] * 10)], split="train2014")
    with pytest.raises(InputError, match="3 questions .* have no annotation"):
        load_vqa(q, a)
    _, a = write_vqa(tmp_path, [(qid, i + 100, qq, an) for qid, i, qq, an in ITEMS], split="x")
    with pytest.raises(InputError, match="question_id 10 is about image 1 .* but image 101"):
        load_vqa(q, a)


@pytest.mark.parametrize(
    ("eval_id", "coco"),
    [
        ("391895", 391895),
        ("COCO_val2014_000000391895.jpg", 391895),
        ("val2014/COCO_val2014_000000391895.jpg", 391895),
        ("000000391895.jpg", 391895),
        ("6f31120d767ae2c45ea3035913704228fdad4882251917", None),  # a content hash
        ("cat.jpg", None),
    ],
)
def test_evaluation_ids_map_to_coco_ids(eval_id, coco):
    assert coco_image_id(eval_id) == coco


def test_only_questions_about_evaluation_images_are_asked_capped_by_seed(tmp_path):
    table = load_vqa(*write_vqa(tmp_path, ITEMS))
    eval_ids = ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000003.jpg", "x.jpg"]
    asked = questions_for_images(table, eval_ids, "vqav2", None, seed=0)
    assert list(asked.columns) == QUESTION_COLUMNS
    assert asked["question_id"].tolist() == ["10", "11", "30"]
    assert asked["image_id"].tolist() == [eval_ids[0], eval_ids[0], eval_ids[1]]
    capped = questions_for_images(table, eval_ids, "vqav2", 2, seed=0)
    assert len(capped) == 2 and capped.equals(questions_for_images(table, eval_ids, "vqav2", 2, 0))
    with pytest.raises(InputError, match="none of the 1 evaluation images has a question"):
        questions_for_images(table, ["abc"], "vqav2", None, seed=0)


def test_examples_are_drawn_by_seed_with_coco_captions(tmp_path):
    items = [(100 + i, i, f"q{i}?", [f"a{i}"] * 10) for i in range(40)]
    train = load_vqa(*write_vqa(tmp_path, items, split="train2014"))
    captions_file = tmp_path / "captions_train2014.json"
    captions_file.write_text(
        json.dumps(
            {
                "annotations": [
                    {"image_id": i, "id": 1000 - i, "caption": f"second  caption {i}"}
                    for i in range(36)
                ]
                + [
                    {"image_id": i, "id": 10 + i, "caption": f"first caption {i}"}
                    for i in range(36)
                ]
            }
        )
    )
    captions = load_coco_captions(captions_file)
    assert captions[5] == "first caption 5"  # the lowest annotation id
    examples = draw_examples(train, captions, 32, seed=0)
    assert len(examples) == 32 and len({e["image_id"] for e in examples}) == 32
    assert all(e["image_id"] < 36 for e in examples)  # only captioned images
    assert examples == draw_examples(train, captions, 32, seed=0)
    assert examples != draw_examples(train, captions, 32, seed=1)
    assert examples[0]["answer"] == f"a{examples[0]['image_id']}"
    with pytest.raises(InputError, match="64 examples asked for, but only 36"):
        draw_examples(train, captions, 64, seed=0)


def test_the_prompt_puts_the_caption_in_the_images_place():
    examples = [{"caption": "a dog", "question": "what animal?", "answer": "dog"}]
    prompt = build_prompt("Answer briefly.", examples, "a red\nbus", "What color is the bus?")
    assert prompt == (
        "Answer briefly.\n\n"
        "Description: a dog\nQuestion: what animal?\nAnswer: dog\n\n"
        "Description: a red bus\nQuestion: What color is the bus?\nAnswer:"
    )
