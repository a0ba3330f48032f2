"""The built-in emoji dataset, made from system packages on any Debian machine.

Every fully-qualified emoji of /usr/share/unicode/emoji/emoji-test.txt (package
unicode-data) is drawn with Noto Color Emoji (package fonts-noto-color-emoji; a bitmap
font that only exists at size 109), cropped, centred on a transparent square and
resized. Captions come from the CLDR name, the subgroup and the group. The split is a
hash of the name without skin tones, so the skin-tone variants of one emoji share a
split and a model is never tested on an emoji it trained on in another colour.

    OUT/images/1f600.png ...
    OUT/captions.jsonl     {"image", "captions", "name", "char", "group", "subgroup", "split"}
    OUT/dataset.json       counts, skipped emoji, sources
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from polymodal.data.builtin.staging import MARKER, check_target, staged_folder
from polymodal.errors import DataError
from polymodal.paths import cache_dir

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size of Noto Color Emoji's bitmaps
INSTALL_HINT = "install them with: apt-get install unicode-data fonts-noto-color-emoji"
SPLITS = (("train", 80), ("val", 90), ("test", 100))  # cumulative percent of names
_SKIN_TONE = re.compile(r"[:,]?\s*(?:light|medium-light|medium|medium-dark|dark) skin tone")
# Wraps the entry iterator, e.g. in a progress bar: (entries, total) -> entries.
Progress = Callable[[Iterable["EmojiEntry"], int], Iterable["EmojiEntry"]]
_LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*(\S+)\s+E\d+\.\d+\s+(.+)$")


@dataclass(frozen=True)
class EmojiEntry:
    char: str
    name: str
    group: str
    subgroup: str
    codepoints: str  # "1f44b-1f3fd", the image file name

    @property
    def base_name(self) -> str:
        """The name without skin tones: variants of one emoji share it."""
        return _SKIN_TONE.sub("", self.name).strip(" :,")

    @property
    def split(self) -> str:
        bucket = int(hashlib.sha256(self.base_name.encode()).hexdigest(), 16) % 100
        return next(name for name, upper in SPLITS if bucket < upper)

    @property
    def captions(self) -> tuple[str, ...]:
        subgroup = self.subgroup.replace("-", " ")
        return (self.name, f"{self.name} emoji", f"{self.name}, {subgroup}, {self.group.lower()}")


def parse_emoji_test(path: Path = EMOJI_TEST) -> list[EmojiEntry]:
    """The fully-qualified emoji of an emoji-test.txt file, with group and subgroup."""
    if not path.is_file():
        raise DataError(f"{path} not found; the emoji dataset needs Unicode's emoji list and the "
                        f"Noto Color Emoji font: {INSTALL_HINT}")
    entries, group, subgroup = [], "", ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif match := _LINE.match(line):
            codes, char, name = match.groups()
            codepoints = "-".join(c.lower() for c in codes.split())
            entries.append(EmojiEntry(char, name.strip(), group, subgroup, codepoints))
    if not entries:
        raise DataError(f"{path} lists no fully-qualified emoji")
    return entries


def render_emoji(char: str, font: ImageFont.FreeTypeFont, size: int) -> Image.Image | None:
    """size x size RGBA drawing of one emoji, or None when the font has no single glyph
    for it (it would draw nothing, or the pieces of a sequence side by side)."""
    canvas = Image.new("RGBA", (FONT_SIZE * 4, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((FONT_SIZE // 4, FONT_SIZE // 4), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    width, height = box[2] - box[0], box[3] - box[1]
    if width > 1.5 * FONT_SIZE or height < FONT_SIZE // 4:  # several glyphs, or a sliver
        return None
    glyph = canvas.crop(box)
    side = max(width, height)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - width) // 2, (side - height) // 2))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def build_emoji_dataset(out: Path, size: int = 64, emoji_test: Path = EMOJI_TEST,
                        font_path: Path = EMOJI_FONT, progress: Progress | None = None,
                        overwrite: bool = False) -> dict:
    """Render the dataset into `out` (written under a temporary name, then renamed).

    `out` must be new, empty, or (with `overwrite`) an earlier emoji dataset: a folder
    holding anything else is never deleted."""
    out = Path(out).resolve()
    check_target(out, overwrite, "emoji dataset", "emoji")
    entries = parse_emoji_test(emoji_test)
    if not font_path.is_file():
        raise DataError(f"{font_path} not found; {INSTALL_HINT}")
    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    rows, skipped = [], []
    with staged_folder(out) as tmp:
        (tmp / "images").mkdir()
        for entry in progress(entries, len(entries)) if progress else entries:
            image = render_emoji(entry.char, font, size)
            if image is None:
                skipped.append(entry.name)
                continue
            image.save(tmp / "images" / f"{entry.codepoints}.png", optimize=False)
            rows.append({"image": f"images/{entry.codepoints}.png", "captions": list(entry.captions),
                         "name": entry.name, "char": entry.char, "group": entry.group,
                         "subgroup": entry.subgroup, "split": entry.split})
        with open(tmp / "captions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        info = {"kind": "emoji", "emoji": len(rows), "size": size, "skipped": skipped,
                "splits": {s: sum(r["split"] == s for r in rows) for s, _ in SPLITS},
                "sources": {"emoji_test": str(emoji_test), "font": str(font_path)}}
        (tmp / MARKER).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info


def default_emoji_root() -> Path:
    return cache_dir() / "datasets" / "emoji"


def ensure_emoji_dataset(root: Path | None = None) -> Path:
    """The dataset folder, built first if it is not there yet. A file lock next to it
    makes concurrent callers (the processes of a torchrun job) build it once."""
    root = Path(root or default_emoji_root()).resolve()
    if (root / "dataset.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "dataset.json").is_file():
            build_emoji_dataset(root)
    return root
