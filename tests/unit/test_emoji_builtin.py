"""The built-in emoji dataset: parsing Unicode's list, splits, captions, rendering."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.data.builtin.emoji import EMOJI_FONT, build_emoji_dataset, parse_emoji_test
from polymodal.data.sources import EmojiSource, load_source
from polymodal.errors import DataError

SAMPLE = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face
# group: People & Body
# subgroup: hand-fingers-open
1F44B                                                  ; fully-qualified     # 👋 E0.6 waving hand
1F44B 1F3FB                                            ; fully-qualified     # 👋🏻 E1.0 waving hand: light skin tone
1F44B 1F3FF                                            ; fully-qualified     # 👋🏿 E1.0 waving hand: dark skin tone
# group: Flags
# subgroup: country-flag
1F1EB 1F1F7                                            ; fully-qualified     # 🇫🇷 E2.0 flag: France
1F468 200D 1F469 200D 1F467                            ; fully-qualified     # 👨‍👩‍👧 E2.0 family: man, woman, girl
"""


@pytest.fixture
def sample_file(tmp_path: Path) -> Path:
    path = tmp_path / "emoji-test.txt"
    path.write_text(SAMPLE, encoding="utf-8")
    return path


def test_only_fully_qualified_emoji_with_group_and_subgroup(sample_file: Path) -> None:
    entries = parse_emoji_test(sample_file)
    assert [e.name for e in entries] == ["grinning face", "smiling face", "waving hand",
                                         "waving hand: light skin tone", "waving hand: dark skin tone",
                                         "flag: France", "family: man, woman, girl"]
    assert entries[0].group == "Smileys & Emotion" and entries[0].subgroup == "face-smiling"
    assert entries[3].codepoints == "1f44b-1f3fb" and entries[6].char == "👨\u200d👩\u200d👧"
    assert entries[0].captions == ("grinning face", "grinning face emoji",
                                   "grinning face, face smiling, smileys & emotion")


def test_skin_tone_variants_share_their_split(sample_file: Path) -> None:
    waving = [e for e in parse_emoji_test(sample_file) if e.name.startswith("waving hand")]
    assert {e.base_name for e in waving} == {"waving hand"}
    assert len({e.split for e in waving}) == 1
    assert all(e.split in ("train", "val", "test") for e in parse_emoji_test(sample_file))


def test_missing_system_files_name_the_packages(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install unicode-data fonts-noto-color-emoji"):
        parse_emoji_test(tmp_path / "none.txt")


@pytest.mark.skipif(not EMOJI_FONT.is_file(), reason="fonts-noto-color-emoji is not installed")
def test_build_renders_every_emoji_and_writes_captions(sample_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "emoji"
    info = build_emoji_dataset(out, size=32, emoji_test=sample_file)
    assert info["emoji"] == 7 and info["skipped"] == []
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert rows[0]["image"] == "images/1f600.png" and rows[0]["char"] == "😀"
    image = Image.open(out / rows[0]["image"])
    assert image.size == (32, 32) and image.mode == "RGBA"
    # A smiley is yellow: the opaque pixels are mostly red + green, little blue.
    rgba = np.asarray(image).reshape(-1, 4).astype(float)
    opaque = rgba[rgba[:, 3] > 200]
    r, g, b = opaque[:, :3].mean(axis=0)
    assert len(opaque) > 300 and r > 150 and g > 120 and b < 100
    assert not list(tmp_path.glob(".emoji.tmp-*"))
    everything = load_source(EmojiSource(root=str(out), split="all"))
    assert len(everything) == 7 and everything.records[0].captions[0] == "grinning face"


@pytest.mark.skipif(not EMOJI_FONT.is_file(), reason="fonts-noto-color-emoji is not installed")
def test_a_folder_holding_other_files_is_never_replaced(sample_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from polymodal.data.builtin.emoji import ensure_emoji_dataset

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty and holds no emoji dataset"):
        build_emoji_dataset(victim, size=16, emoji_test=sample_file)
    with pytest.raises(DataError, match="not empty and holds no emoji dataset"):
        ensure_emoji_dataset(victim)
    monkeypatch.chdir(victim)
    with pytest.raises(DataError, match="not empty"):
        build_emoji_dataset(Path("."), size=16, emoji_test=sample_file)
    assert (victim / "notes.txt").read_text() == "precious"
    out = tmp_path / "emoji"
    build_emoji_dataset(out, size=16, emoji_test=sample_file)
    with pytest.raises(DataError, match="already holds an emoji dataset"):
        build_emoji_dataset(out, size=16, emoji_test=sample_file)
    assert build_emoji_dataset(out, size=16, emoji_test=sample_file, overwrite=True)["emoji"] == 7
