"""Query arithmetic, as rclip has it: weighted sums and differences of text and images.

    "beach + 2:dog - people"      beach, plus dog twice, minus people
    "photos/cat.jpg + snow"       an image term (an existing image file) plus a text term

Operators need spaces around them, so "t-shirt" and "black-and-white" stay one term. The
query vector is the normalised sum of sign x weight x (normalised term embedding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from polymodal.data.sources import IMAGE_EXTENSIONS
from polymodal.errors import DataError

_OPERATOR = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(.+)$")


@dataclass(frozen=True)
class Term:
    weight: float  # signed
    text: str = ""
    image: str = ""  # path of an image term


def parse_query(query: str) -> list[Term]:
    """Terms of `query`; an empty term, a zero weight or a missing image file is an error."""
    parts = _OPERATOR.split(" " + query.strip() + " ")
    # split() with a capture group alternates term, operator, term, ...
    terms, sign = [], 1.0
    for n, part in enumerate(parts):
        if n % 2:
            sign = 1.0 if part == "+" else -1.0
            continue
        part = part.strip()
        if not part:
            raise DataError(f"query {query!r}: an operator has no term on one side")
        weight, body = 1.0, part
        match = _WEIGHT.match(part)
        if match:
            weight, body = float(match.group(1)), match.group(2).strip()
            if weight == 0 or not body:
                raise DataError(f"query {query!r}: term {part!r} needs a non-zero weight and a body, e.g. 2:dog")
        terms.append(_term(sign * weight, body, query))
    return terms


def _term(weight: float, body: str, query: str) -> Term:
    if Path(body).suffix.lower() in IMAGE_EXTENSIONS:
        if not Path(body).is_file():
            raise DataError(f"query {query!r}: image term {body!r} is not a file")
        return Term(weight, image=body)
    return Term(weight, text=body)
