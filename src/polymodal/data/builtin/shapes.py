"""The built-in synthetic scenes dataset for visual question answering (CLEVR-like, drawn
with Pillow): 1-4 shapes of several colours and sizes per scene, questions of five types
(exist, count, colour, shape, spatial) with answers balanced within each type, and
captions for the same scenes.

Held-out combinations: colour-shape pairs (HELD_OUT, e.g. a red triangle) never appear in
a training scene. Scenes are split into train, val and test (no held-out pair) and
test_heldout (each scene shows at least one held-out pair), so VQA accuracy can be
reported on seen and on never-seen combinations.

    OUT/images/scene-00000.png ...
    OUT/scenes.jsonl      {"image", "split", "objects": [{"shape", "colour", "size", "x", "y"}]}
    OUT/questions.jsonl   {"image", "question", "answer", "type", "template", "split"}
    OUT/captions.jsonl    {"image", "captions", "split"}   (a captions source for training)
    OUT/dataset.json      counts per split and type, the answer vocabulary, the held-out pairs
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from polymodal.data.builtin.staging import MARKER, check_target, staged_folder
from polymodal.errors import DataError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 190), "gray": (120, 120, 120)}
SIZES = {"small": 0.09, "large": 0.15}  # radius as a share of the image side
OUTER = 1.3  # a square's corners lie at 1.27 radii from its centre, a triangle's at 1.24
HELD_OUT = (("red", "triangle"), ("blue", "circle"), ("yellow", "square"))
MAX_OBJECTS = 4
QUESTION_TYPES = ("exist", "count", "colour", "shape", "spatial")
SPLIT_SHARES = (("train", 0.8), ("val", 0.9), ("test", 1.0))
SPATIAL_MARGIN = 0.08  # centres closer than this (share of the side) are not "left of"
Progress = Callable[[Iterable[int], int], Iterable[int]]


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    x: float  # centre, as a share of the image side
    y: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    type: str
    template: str  # the wording with its colour and shape words left out: answers are balanced per template


# --------------------------------------------------------------------------- scenes


def random_scene(rng: random.Random, held_out: bool) -> list[Shape]:
    """1-MAX_OBJECTS shapes that do not overlap; with `held_out` at least one shows a
    HELD_OUT pair, without it none does."""
    while True:
        count = rng.randint(1, MAX_OBJECTS)
        scene: list[Shape] = []
        for _ in range(count):
            pair = rng.choice(HELD_OUT) if held_out and not scene else None
            placed = _place(rng, scene, pair, allow_held_out=held_out)
            if placed is None:
                break
            scene.append(placed)
        if len(scene) == count:
            return scene


def _place(rng: random.Random, scene: list[Shape], pair: tuple[str, str] | None,
           allow_held_out: bool) -> Shape | None:
    for _ in range(100):
        colour, shape = pair or (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        if not allow_held_out and (colour, shape) in HELD_OUT:
            continue
        size = rng.choice(list(SIZES))
        r = SIZES[size] * OUTER  # corners reach past the radius: space shapes by their outer circle
        x, y = rng.uniform(r + 0.02, 1 - r - 0.02), rng.uniform(r + 0.02, 1 - r - 0.02)
        if all(math.hypot(x - o.x, y - o.y) > r + o.radius * OUTER + 0.03 for o in scene):
            return Shape(shape, colour, size, round(x, 4), round(y, 4))
    return None


def draw_scene(scene: list[Shape], side: int, rng: random.Random) -> Image.Image:
    """A light, slightly noisy background with the shapes drawn on it."""
    shade = rng.randint(200, 235)
    image = Image.new("RGB", (side, side), (shade, shade, shade - 5))
    draw = ImageDraw.Draw(image)
    for _ in range(side):  # specks, so the background is not a constant the model can rely on
        x, y = rng.randrange(side), rng.randrange(side)
        draw.point((x, y), fill=(shade - 25, shade - 25, shade - 25))
    for o in scene:
        cx, cy, r = o.x * side, o.y * side, o.radius * side
        colour = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif o.shape == "square":
            half = r * 0.9
            draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)], fill=colour)
    return image


# --------------------------------------------------------------------------- language


def captions_of(scene: list[Shape]) -> list[str]:
    """Two or three captions: the objects listed, and a spatial relation when there is one."""
    ordered = sorted(scene, key=lambda o: o.x)
    listed = [f"a {o.size} {o.colour} {o.shape}" for o in ordered]
    plural = {s: sum(o.shape == s for o in scene) for s in SHAPES}
    out = [_join(listed), "; ".join(f"{n} {s}{'s' if n > 1 else ''}" for s, n in plural.items() if n)]
    if len(scene) >= 2 and ordered[-1].x - ordered[0].x > SPATIAL_MARGIN:
        out.append(f"a {ordered[0].name} to the left of a {ordered[-1].name}")
    return out


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def questions_of(scene: list[Shape], rng: random.Random) -> list[Question]:
    """Every question of every type this scene answers unambiguously."""
    out: list[Question] = []
    pairs = {(o.colour, o.shape) for o in scene}
    for colour in COLOURS:  # exist: a colour-shape pair, present or not
        for shape in SHAPES:
            out.append(Question(f"is there a {colour} {shape}?", "yes" if (colour, shape) in pairs else "no", "exist",
                                "is there a C S?"))
    out.append(Question("how many objects are there?", str(len(scene)), "count", "how many objects?"))
    for shape in SHAPES:  # count
        out.append(Question(f"how many {shape}s are there?", str(sum(o.shape == shape for o in scene)), "count",
                            "how many Ss?"))
    for colour in COLOURS:
        out.append(Question(f"how many {colour} objects are there?", str(sum(o.colour == colour for o in scene)),
                            "count", "how many C objects?"))
    for o in scene:  # colour and shape of a uniquely described object
        if sum(p.shape == o.shape for p in scene) == 1:
            out.append(Question(f"what colour is the {o.shape}?", o.colour, "colour", "what colour is the S?"))
        if sum(p.colour == o.colour for p in scene) == 1:
            out.append(Question(f"what shape is the {o.colour} object?", o.shape, "shape",
                                "what shape is the C object?"))
    unique = [o for o in scene if sum(p.name == o.name for p in scene) == 1]
    for a in unique:  # spatial: left of / above, between objects far enough apart
        for b in unique:
            if a is b:
                continue
            if abs(a.x - b.x) > SPATIAL_MARGIN:
                out.append(Question(f"is the {a.name} left of the {b.name}?", "yes" if a.x < b.x else "no", "spatial",
                                    "is the C S left of the C S?"))
            if abs(a.y - b.y) > SPATIAL_MARGIN:
                out.append(Question(f"is the {a.name} above the {b.name}?", "yes" if a.y < b.y else "no", "spatial",
                                    "is the C S above the C S?"))
    rng.shuffle(out)
    return out


def balance(candidates: list[tuple[int, Question]], rng: random.Random, per_scene: int,
            group: Callable[[int], str] = lambda scene_id: "") -> list[tuple[int, Question]]:
    """Keep, within each question template (and group of scenes, e.g. a split), the same
    number of questions for every answer (as many as the rarest answer has, at most
    `per_scene` per scene and template), so that the wording of a question says nothing
    about its answer: a model that ignores the image is at chance."""
    by_type: dict[tuple[str, str], dict[str, list[tuple[int, Question]]]] = defaultdict(lambda: defaultdict(list))
    for scene_id, q in candidates:
        by_type[group(scene_id), q.template][q.answer].append((scene_id, q))
    kept: list[tuple[int, Question]] = []
    for answers in by_type.values():
        pools = [answers[a] for a in sorted(answers)]
        for pool in pools:
            rng.shuffle(pool)
        taken: Counter[int] = Counter()  # questions of this template kept per scene
        positions = [0] * len(pools)
        while True:  # one question per answer per round, until some answer runs out
            chosen = []
            for k, pool in enumerate(pools):
                found = _next_free(pool, positions, k, taken, per_scene)
                if found is None:
                    break
                taken[found[0]] += 1
                chosen.append(found)
            if len(chosen) < len(pools):
                break
            kept += chosen
    return sorted(kept, key=lambda pair: pair[0])


# --------------------------------------------------------------------------- building


def _next_free(pool: list[tuple[int, Question]], positions: list[int], k: int, taken: Counter[int],
               per_scene: int) -> tuple[int, Question] | None:
    """The next question of `pool` whose scene still has room, moving past those without."""
    while positions[k] < len(pool):
        candidate = pool[positions[k]]
        positions[k] += 1
        if taken[candidate[0]] < per_scene:
            return candidate
    return None


def build_shapes_dataset(out: Path, scenes: int = 5000, size: int = 64, seed: int = 0,
                         held_out_share: float = 0.1, per_scene: int = 2, overwrite: bool = False,
                         progress: Progress | None = None) -> dict:
    """Render `scenes` scenes into `out` (a share `held_out_share` of them show held-out
    colour-shape pairs and form test_heldout). Deterministic for a given seed."""
    if scenes < 10:
        raise DataError(f"build at least 10 scenes, got {scenes}")
    if not 0 < held_out_share < 1 or size < 32:
        raise DataError("held_out_share must be in (0, 1) and size at least 32 pixels")
    out = Path(out).resolve()
    check_target(out, overwrite, "shapes dataset", "shapes")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    candidates: list[tuple[int, Question]] = []
    with staged_folder(out) as tmp:
        (tmp / "images").mkdir()
        for i in progress(range(scenes), scenes) if progress else range(scenes):
            held_out = rng.random() < held_out_share
            scene = random_scene(rng, held_out)
            name = f"images/scene-{i:05d}.png"
            draw_scene(scene, size, rng).save(tmp / name)
            split = "test_heldout" if held_out else _split(rng.random())
            rows.append({"image": name, "split": split, "objects": [asdict(o) for o in scene],
                         "captions": captions_of(scene)})
            candidates += [(i, q) for q in questions_of(scene, rng)]
        questions = balance(candidates, rng, per_scene, group=lambda i: str(rows[i]["split"]))
        _write_jsonl(tmp / "scenes.jsonl", [{k: r[k] for k in ("image", "split", "objects")} for r in rows])
        _write_jsonl(tmp / "captions.jsonl", [{k: r[k] for k in ("image", "captions", "split")} for r in rows])
        _write_jsonl(tmp / "questions.jsonl", [{"image": rows[i]["image"], **asdict(q), "split": rows[i]["split"]}
                                                for i, q in questions])
        info = {"kind": "shapes", "scenes": scenes, "size": size, "seed": seed,
                "splits": dict(Counter(r["split"] for r in rows)),
                "questions": {t: dict(Counter(q.answer for _, q in questions if q.type == t)) for t in QUESTION_TYPES},
                "answers": sorted({q.answer for _, q in questions}),
                "held_out_pairs": [list(p) for p in HELD_OUT]}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _split(draw: float) -> str:
    return next(name for name, upper in SPLIT_SHARES if draw < upper)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
