"""Every image-text source: formats, grouping, filters, and the errors they give."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from polymodal.data.sources import (
    IMAGE_EXTENSIONS,
    CaptionsSource,
    ClassSource,
    TarSource,
    image_files,
    load_source,
)
from polymodal.errors import DataError


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_jsonl_rows_of_one_image_are_merged_with_their_captions(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        _png(tmp_path / "img" / name)
    rows = [{"image": "img/a.png", "caption": "a red square"}, {"image": "img/b.png", "caption": "blue"},
            {"image": "img/a.png", "caption": "red box"}, {"image": "img/a.png", "caption": "a red square"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_source(CaptionsSource(file=str(tmp_path / "c.jsonl")))
    assert [r.captions for r in pairs.records] == [("a red square", "red box"), ("blue",)]
    assert [r.group for r in pairs.records] == [0, 1]
    assert pairs.captions() == ["a red square", "red box", "blue"]


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_with_a_split_file(tmp_path: Path, suffix: str, sep: str) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _png(tmp_path / "images" / name)
    lines = [sep.join(("file", "idx", "text"))] + [sep.join((n, str(i), f"photo {n}"))
                                                 for i, n in enumerate(("a.jpg", "b.jpg", "c.jpg"))]
    (tmp_path / f"captions{suffix}").write_text("\n".join(lines) + "\n")
    (tmp_path / "split.txt").write_text("a.jpg\nc.jpg\n")
    pairs = load_source(CaptionsSource(file=str(tmp_path / f"captions{suffix}"), images=str(tmp_path / "images"),
                                       image_column="file", caption_columns=("text",),
                                       split=str(tmp_path / "split.txt")))
    assert [r.key for r in pairs.records] == ["a.jpg", "c.jpg"]


def test_nested_columns_list_captions_and_filters(tmp_path: Path) -> None:
    for name in ("t/1.png", "g/1.png", "t/2.png", "g/2.png"):
        _png(tmp_path / name)
    rows = [{"files": {"t": "t/1.png", "g": "g/1.png"}, "name": "smile", "tags": ["happy", ""], "base": None,
             "group": "faces"},
            {"files": {"t": "t/2.png", "g": "g/2.png"}, "name": "smile: dark", "tags": [], "base": "smile",
             "group": "faces"}]
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = load_source(CaptionsSource(file=str(tmp_path / "e.jsonl"), image_column="files.g",
                                      caption_columns=("name", "tags"), where_empty=("base",),
                                      where={"group": "faces"}))
    assert [(r.key, r.captions) for r in base.records] == [("g/1.png", ("smile", "happy"))]


def test_missing_images_and_captions_are_dropped_and_reported(tmp_path: Path) -> None:
    _png(tmp_path / "here.png")
    rows = [{"image": "here.png", "caption": "x"}, {"image": "gone.png", "caption": "y"},
            {"image": "here2.png", "caption": ""}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_source(CaptionsSource(file=str(tmp_path / "c.jsonl")))
    assert len(pairs) == 1
    assert pairs.dropped == {"gone.png": "file not found", "here2.png": "no caption"}


def test_table_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_source(CaptionsSource(file=str(bad)))
    bad.write_text('{"img": "a.png", "caption": "x"}\n')
    with pytest.raises(DataError, match=r"row 1 has no column 'image' \(columns: caption, img\)"):
        load_source(CaptionsSource(file=str(bad)))
    with pytest.raises(DataError, match="no such file"):
        load_source(CaptionsSource(file=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="unknown table format '.xml'"):
        (tmp_path / "c.xml").write_text("<x/>")
        load_source(CaptionsSource(file=str(tmp_path / "c.xml")))


def test_an_empty_source_is_an_error_that_says_why(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "gone.png", "caption": "y"}) + "\n")
    with pytest.raises(DataError, match=r"no image-caption pairs in .*c.jsonl \(1 dropped, e.g. \('gone.png'"):
        load_source(CaptionsSource(file=str(tmp_path / "c.jsonl")))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_tar_shards_pair_images_with_txt_or_json(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "0001.png", _png_bytes((255, 0, 0)))
        _add(tar, "0001.txt", b"a red square\n")
        _add(tar, "0002.png", _png_bytes((0, 0, 255)))
        _add(tar, "0002.json", json.dumps({"caption": "a blue square"}).encode())
        _add(tar, "0003.png", _png_bytes((0, 255, 0)))  # no caption
    pairs = load_source(TarSource(shards=(str(tmp_path / "shard-*.tar"),)))
    assert [r.captions for r in pairs.records] == [("a red square",), ("a blue square",)]
    assert list(pairs.dropped) == [f"{shard}:0003.png"]
    image = pairs.records[1].image.load()
    assert image.getpixel((0, 0)) == (0, 0, 255)


def test_compressed_or_missing_shards_are_errors(tmp_path: Path) -> None:
    gz = tmp_path / "s.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        _add(tar, "a.txt", b"x")
    with pytest.raises(DataError, match="not an uncompressed tar"):
        load_source(TarSource(shards=(str(gz),)))
    with pytest.raises(DataError, match="no such tar shard"):
        load_source(TarSource(shards=(str(tmp_path / "none-*.tar"),)))


def test_class_folders_get_template_captions_and_class_groups(tmp_path: Path) -> None:
    for path in ("golden_retriever/1.png", "golden_retriever/sub/2.jpg", "tabby-cat/3.png"):
        _png(tmp_path / "classes" / path)
    (tmp_path / "classes" / "notes.txt").write_text("not a class")
    pairs = load_source(ClassSource(root=str(tmp_path / "classes"), templates=("a photo of a {}.", "{}")))
    assert [r.captions for r in pairs.records] == [("a photo of a golden retriever.", "golden retriever")] * 2 + \
        [("a photo of a tabby cat.", "tabby cat")]
    assert [r.group for r in pairs.records] == [0, 0, 1]


def test_label_tables_with_class_names(tmp_path: Path) -> None:
    for name in ("x1.png", "x2.png"):
        _png(tmp_path / "train" / name)
    (tmp_path / "labels.tsv").write_text("file\twnid\ntrain/x1.png\tn01\ntrain/x2.png\tn02\n")
    (tmp_path / "classes.tsv").write_text("idx\twnid\tname\n0\tn01\tgoldfish\n1\tn02\tEgyptian cat\n")
    pairs = load_source(ClassSource(labels=str(tmp_path / "labels.tsv"), label_column="wnid",
                                    class_names=str(tmp_path / "classes.tsv"), class_key_column="wnid",
                                    templates=("a photo of a {}.",)))
    assert [r.captions[0] for r in pairs.records] == ["a photo of a goldfish.", "a photo of a Egyptian cat."]
    with pytest.raises(DataError, match="exactly one of root"):
        load_source(ClassSource())


def test_image_files_lists_what_rglob_would_in_path_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name in ["b/x.jpg", "a-b/y.PNG", "a/z.jpeg", "a/notes.txt", "a/deep/er/w.webp", "real/v.jpg"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (root / "folder.jpg").mkdir()  # a directory named like an image is not one
    (root / "a" / "linked-dir").symlink_to(root / "real")  # not entered, as rglob does not
    (root / "a" / "linked.jpg").symlink_to(root / "real" / "v.jpg")  # a link to a file is listed
    (root / "a" / "broken.jpg").symlink_to(root / "gone.jpg")  # a broken link is not
    (root / "a" / "loop.jpg").symlink_to(root / "a" / "loop.jpg")  # nor a link to itself
    (root / "b" / "..jpg").write_bytes(b"")  # suffix .jpg, as pathlib reads it
    (root / "b" / ".jpg").write_bytes(b"")  # a hidden file without a suffix
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    listed = image_files(root)
    assert listed == expected
    assert [p.relative_to(root).as_posix() for p in listed] == [
        "a/deep/er/w.webp", "a/linked.jpg", "a/z.jpeg", "a-b/y.PNG", "b/..jpg", "b/x.jpg", "real/v.jpg"]
    assert image_files(tmp_path / "missing") == []
