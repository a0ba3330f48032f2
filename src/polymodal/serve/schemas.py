"""The JSON shapes of the HTTP API (pydantic models; they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Modality = Literal["image", "text"]


class HitOut(BaseModel):
    id: int = Field(description="Item id: use it for /api/items/{id} and 'more like this'.")
    score: float = Field(description="Cosine similarity to the query.")
    modality: Modality
    name: str = Field(description="File name of an image, or the caption text.")
    text: str | None = Field(default=None, description="The caption of a text item.")
    image_id: int | None = Field(default=None, description="For a caption: the id of its image, when indexed.")
    thumbnail: str | None = Field(default=None, description="URL of the thumbnail of an image item.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    match: float | None = Field(default=None, description="P(the query describes the image) from the fusion "
                                                          "model's ITM head, when it re-ranked the hits.")


class SearchOut(BaseModel):
    query: str
    modality: Modality
    k: int
    took_ms: float
    hits: list[HitOut]
    reranked: bool = Field(default=False, description="Whether the fusion model re-ranked the hits: they are then "
                                                      "ordered by its ITM log-odds plus the dual encoder's logit, "
                                                      "and each carries `match`.")


class ExplainOut(BaseModel):
    item: int
    text: str
    words: list[str] = Field(description="The text's words as the fusion model reads them.")
    grid: int = Field(description="The image is grid x grid patches.")
    maps: list[list[float]] = Field(description="Per word, its attention over the patches, row by row (sums to 1).")
    match: float = Field(description="P(the text describes the image), from the ITM head.")
    took_ms: float


class ItemOut(BaseModel):
    id: int
    modality: Modality
    name: str
    text: str | None = None
    size: int
    added: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    thumbnail: str | None = None
    original: str | None = None


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="Cosine similarity between the image and the label's prompt.")
    probability: float


class ClassifyOut(BaseModel):
    labels: list[LabelScore] = Field(description="Every label, best first.")
    best: str
    took_ms: float


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"
    store: str
    model_id: str
    images: int
    texts: int
    index: str
    reranker: str | None = Field(default=None, description="Model id of the fusion model re-ranking and explaining "
                                                           "text searches, if the server has one.")


class JobOut(BaseModel):
    id: str
    source: str = Field(description="What the job indexes.")
    state: Literal["running", "done", "failed", "interrupted"]
    stage: str = Field(description="start, hashing, embedding, captions or index.")
    done: int
    total: int
    started: float = Field(description="Unix time.")
    updated: float = Field(description="Unix time of the latest event.")
    message: str = Field(description="The summary of a finished job, or the error of a failed one.")


class ErrorOut(BaseModel):
    error: str
