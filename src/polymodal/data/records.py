"""What every image-text source produces: a list of `PairRecord`s.

A record is one image with one or more captions and a group id; records with the same
group are positives of each other (an image's own captions always are). Images are
referenced, not loaded: `ImageRef` points into a file or into a member of a tar shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from polymodal.transforms import DEFAULT_MAX_PIXELS, load_image


@dataclass(frozen=True)
class ImageRef:
    """An image file, or a member of an uncompressed tar shard (byte range)."""

    path: str
    member: str = ""  # name inside the tar shard; "" for a plain file
    offset: int = 0  # first byte of the member's data in the shard
    size: int = 0

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            if not self.member:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)

    def load(self, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
        """Decoded RGB image, transparency composited on `background`; ImageDecodeError
        (naming this image) when unreadable."""
        if not self.member:
            return load_image(Path(self.path), max_pixels, background)
        return load_image(self.read_bytes(), max_pixels, background, name=self.name)


@dataclass(frozen=True)
class PairRecord:
    image: ImageRef
    captions: tuple[str, ...]
    group: int
    key: str = ""  # a short human-readable name (file name, emoji name, class)


@dataclass
class PairSet:
    """Records of one source plus what was dropped while indexing it."""

    records: list[PairRecord]
    name: str
    dropped: dict[str, str] = field(default_factory=dict)  # item -> reason (missing file, no caption)
    # Labelled sources (class folders, label tables): group g is class g, named
    # class_names[g]; class_synonyms[g] holds further names for zero-shot prompts.
    class_names: list[str] = field(default_factory=list)
    class_synonyms: list[tuple[str, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def captions(self) -> list[str]:
        """Every caption of every record, in record order (the caption table)."""
        return [c for r in self.records for c in r.captions]
