"""The synthetic VQA scenes: deterministic, held-out pairs kept out of training, answers
balanced and true to the drawn scene, captions usable as a training source."""

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.builtin.shapes import COLOURS, HELD_OUT, QUESTION_TYPES, build_shapes_dataset
from polymodal.errors import DataError


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    build_shapes_dataset(out, scenes=300, size=48, seed=3, held_out_share=0.2)
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_same_seed_draws_the_same_dataset(built: Path, tmp_path: Path) -> None:
    again = build_shapes_dataset(tmp_path / "again", scenes=300, size=48, seed=3, held_out_share=0.2)
    assert (tmp_path / "again" / "questions.jsonl").read_bytes() == (built / "questions.jsonl").read_bytes()
    assert (tmp_path / "again/images/scene-00007.png").read_bytes() == (built / "images/scene-00007.png").read_bytes()
    other = build_shapes_dataset(tmp_path / "other", scenes=300, size=48, seed=4, held_out_share=0.2)
    assert (tmp_path / "other" / "scenes.jsonl").read_text() != (built / "scenes.jsonl").read_text()
    assert again == json.loads((built / "dataset.json").read_text()) and other["seed"] == 4


def test_held_out_pairs_never_appear_in_training_scenes(built: Path) -> None:
    held = {tuple(p) for p in HELD_OUT}
    splits = Counter()
    for scene in read(built / "scenes.jsonl"):
        pairs = {(o["colour"], o["shape"]) for o in scene["objects"]}
        splits[scene["split"]] += 1
        assert bool(pairs & held) == (scene["split"] == "test_heldout"), scene
        assert 1 <= len(scene["objects"]) <= 4
    assert set(splits) == {"train", "val", "test", "test_heldout"} and splits["train"] > splits["test_heldout"] > 20


def test_answers_are_balanced_so_the_wording_says_nothing(built: Path) -> None:
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    per_scene: Counter = Counter()
    for q in read(built / "questions.jsonl"):
        counts[q["split"], q["template"]][q["answer"]] += 1
        per_scene[q["image"], q["template"]] += 1
    for (split, template), answers in counts.items():
        assert len(set(answers.values())) == 1, (split, template, answers)  # every answer equally often
    types = {q["type"] for q in read(built / "questions.jsonl")}
    assert types == set(QUESTION_TYPES)
    assert set(counts["train", "how many objects?"]) == {"1", "2", "3", "4"}
    assert len(counts["train", "what colour is the S?"]) == len(COLOURS)
    assert max(per_scene.values()) <= 2


def test_every_answer_is_true_of_the_scene(built: Path) -> None:
    scenes = {s["image"]: s["objects"] for s in read(built / "scenes.jsonl")}
    for q in read(built / "questions.jsonl"):
        objects, text, answer = scenes[q["image"]], q["question"], q["answer"]
        if m := re.fullmatch(r"is there a (\w+) (\w+)\?", text):
            truth = any((o["colour"], o["shape"]) == m.groups() for o in objects)
            assert answer == ("yes" if truth else "no"), q
        elif text == "how many objects are there?":
            assert answer == str(len(objects))
        elif m := re.fullmatch(r"how many (\w+)s are there\?", text):
            assert answer == str(sum(o["shape"] == m[1] for o in objects)), q
        elif m := re.fullmatch(r"how many (\w+) objects are there\?", text):
            assert answer == str(sum(o["colour"] == m[1] for o in objects)), q
        elif m := re.fullmatch(r"what colour is the (\w+)\?", text):
            (only,) = [o for o in objects if o["shape"] == m[1]]
            assert answer == only["colour"]
        elif m := re.fullmatch(r"what shape is the (\w+) object\?", text):
            (only,) = [o for o in objects if o["colour"] == m[1]]
            assert answer == only["shape"]
        else:
            m = re.fullmatch(r"is the (\w+) (\w+) (left of|above) the (\w+) (\w+)\?", text)
            assert m, text
            (a,) = [o for o in objects if (o["colour"], o["shape"]) == (m[1], m[2])]
            (b,) = [o for o in objects if (o["colour"], o["shape"]) == (m[4], m[5])]
            axis = "x" if m[3] == "left of" else "y"
            assert answer == ("yes" if a[axis] < b[axis] else "no"), q


def test_the_image_shows_each_object_in_its_colour(built: Path) -> None:
    for scene in read(built / "scenes.jsonl")[:40]:
        image = Image.open(built / scene["image"]).convert("RGB")
        assert image.size == (48, 48)
        for o in scene["objects"]:
            pixel = image.getpixel((int(o["x"] * 48), int(o["y"] * 48)))  # every shape covers its centre
            assert max(abs(a - b) for a, b in zip(pixel, COLOURS[o["colour"]], strict=True)) < 40, (scene, o)


def test_captions_are_a_training_source(built: Path) -> None:
    from polymodal.data.sources import CaptionsSource, load_captions

    rows = read(built / "captions.jsonl")
    assert all(len(r["captions"]) >= 2 for r in rows)
    train = load_captions(CaptionsSource(file=str(built / "captions.jsonl"), caption_columns=("captions",),
                                         where={"split": "train"}))
    assert len(train.records) == sum(r["split"] == "train" for r in rows) and not train.dropped
    assert train.records[0].captions == tuple(rows[[r["split"] for r in rows].index("train")]["captions"])


def test_shapes_never_overlap(built: Path) -> None:
    from polymodal.data.builtin.shapes import OUTER, SIZES

    for scene in read(built / "scenes.jsonl"):
        objects = scene["objects"]
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                gap = ((a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2) ** 0.5
                assert gap > OUTER * (SIZES[a["size"]] + SIZES[b["size"]]), scene


def test_a_folder_holding_other_files_is_refused_and_the_cli_builds(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty and holds no shapes dataset"):
        build_shapes_dataset(victim, scenes=10)
    assert (victim / "notes.txt").read_text() == "precious"
    with pytest.raises(DataError, match="at least 10 scenes"):
        build_shapes_dataset(tmp_path / "few", scenes=3)
    result = CliRunner().invoke(app, ["data", "build", "shapes", str(tmp_path / "s"), "--scenes", "30"])
    assert result.exit_code == 0, result.output
    assert "wrote 30 scenes" in result.stdout and len(list((tmp_path / "s" / "images").glob("*.png"))) == 30
    again = CliRunner().invoke(app, ["data", "build", "shapes", str(tmp_path / "s"), "--scenes", "30"])
    assert again.exit_code != 0 and "already holds a shapes dataset" in str(again.exception or again.output)
    emoji = tmp_path / "emoji"
    emoji.mkdir()
    (emoji / "dataset.json").write_text('{"emoji": 3}')  # an emoji dataset of an earlier version
    with pytest.raises(DataError, match="holds an emoji dataset, not a shapes dataset"):
        build_shapes_dataset(emoji, scenes=10, overwrite=True)
