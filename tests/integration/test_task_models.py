"""Captioners and VQA models as model directories: saved and loaded bit for bit, refused
where another architecture is expected, and used end to end by `polymodal caption` and
`polymodal ask`."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from polymodal.checkpoint import WEIGHTS_FILE, read_card
from polymodal.cli import app
from polymodal.config import (
    CaptionerConfig,
    FusionConfig,
    FusionModelConfig,
    PreprocessConfig,
    TokenizerConfig,
    ViTConfig,
)
from polymodal.errors import CheckpointError
from polymodal.factory import get_transforms
from polymodal.models.captioner import Captioner
from polymodal.task_models import build_fusion_model, load_captioner, load_fusion_model, save_task_model
from polymodal.tokenizer import Tokenizer, train_wordlevel
from tests.helpers import tiny_transformer

runner = CliRunner()
ENV = {"COLUMNS": "200"}
VISION = ViTConfig(image_size=16, patch_size=4, transformer=tiny_transformer())
WORDS = ["a red circle", "a blue square", "what colour is the circle?", "is there a square?"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(train_wordlevel(WORDS), 10, TokenizerConfig())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    paths = []
    for name, colour in (("red.png", (220, 30, 30)), ("blue.png", (30, 30, 220))):
        Image.new("RGB", (24, 24), colour).save(root / name)
        paths.append(root / name)
    return paths


def captioner(tokenizer: Tokenizer) -> Captioner:
    torch.manual_seed(0)
    return Captioner(CaptionerConfig(vision=VISION, vocab_size=tokenizer.vocab_size, context_length=10,
                                     transformer=tiny_transformer(), preprocess=PreprocessConfig(image_size=16)))


def vqa_config(tokenizer: Tokenizer) -> FusionModelConfig:
    fusion = FusionConfig(kind="cross", vocab_size=tokenizer.vocab_size, context_length=10, image_tokens=17,
                          image_width=32, transformer=tiny_transformer(), mask_token_id=3, num_answers=3)
    return FusionModelConfig(vision=VISION, fusion=fusion, preprocess=PreprocessConfig(image_size=16),
                             answers=("blue", "no", "red"))


def test_a_captioner_round_trips_and_captions_from_the_command_line(tmp_path: Path, tokenizer: Tokenizer,
                                                                    images: list[Path]) -> None:
    model = captioner(tokenizer).eval()
    model_dir = tmp_path / "cap"
    model_id = save_task_model(model, tokenizer, model_dir, metrics={"cider": 0.1})
    loaded, loaded_tokenizer = load_captioner(model_dir)
    assert json.loads((model_dir / "config.json").read_text())["architecture"] == "captioner"
    transform = get_transforms(loaded.cfg.preprocess)
    pixels = torch.stack([transform(p) for p in images])
    expected = [loaded_tokenizer.decode(ids) for ids in model.generate(pixels, beam_size=2, length_penalty=0.6)]
    assert [loaded_tokenizer.decode(ids) for ids in loaded.generate(pixels, beam_size=2, length_penalty=0.6)] == \
        expected
    result = runner.invoke(app, ["caption", str(model_dir), *map(str, images), "--beam", "2", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert [row["caption"] for row in json.loads(result.stdout)] == expected
    with pytest.raises(CheckpointError, match="holds a 'captioner' model, not a dual encoder model"):
        read_card(model_dir)
    with pytest.raises(CheckpointError, match="not a fusion model"):
        load_fusion_model(model_dir)
    assert len(model_id) == 12

    weights = model_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the recorded model id"):
        load_captioner(model_dir)


def test_a_vqa_model_round_trips_and_answers_from_the_command_line(tmp_path: Path, tokenizer: Tokenizer,
                                                                   images: list[Path]) -> None:
    torch.manual_seed(0)
    model = build_fusion_model(vqa_config(tokenizer)).eval()
    model_dir = tmp_path / "vqa"
    save_task_model(model, tokenizer, model_dir)
    loaded, loaded_tokenizer = load_fusion_model(model_dir)
    pixels = get_transforms(PreprocessConfig(image_size=16))(images[0])[None]
    tokens = loaded_tokenizer(["what colour is the circle?"])
    with torch.no_grad():
        before = model.answer_logits(tokens.input_ids, tokens.attention_mask, model.image_tokens(pixels))
        after = loaded.answer_logits(tokens.input_ids, tokens.attention_mask, loaded.image_tokens(pixels))
    torch.testing.assert_close(after, before)
    probabilities = before.softmax(-1)[0]
    result = runner.invoke(app, ["ask", str(model_dir), str(images[0]), "what colour is the circle?", "--json"],
                           env=ENV)
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)["answers"]
    ranked = sorted(zip(("blue", "no", "red"), probabilities.tolist(), strict=True), key=lambda pair: -pair[1])
    assert [a["answer"] for a in answers] == [a for a, _ in ranked]
    assert [a["probability"] for a in answers] == pytest.approx([p for _, p in ranked], abs=1e-5)


def test_bad_inputs_to_the_commands_are_clear(tmp_path: Path, tokenizer: Tokenizer, images: list[Path]) -> None:
    torch.manual_seed(0)
    model_dir = tmp_path / "vqa"
    save_task_model(build_fusion_model(vqa_config(tokenizer)), tokenizer, model_dir)
    missing = runner.invoke(app, ["ask", str(model_dir), str(tmp_path / "nope.png"), "is there a square?"], env=ENV)
    assert missing.exit_code != 0 and "no such image file" in str(missing.exception)
    empty = runner.invoke(app, ["ask", str(model_dir), str(images[0]), "  "], env=ENV)
    assert empty.exit_code != 0 and "the question is empty" in str(empty.exception)
    wrong = runner.invoke(app, ["caption", str(model_dir), str(images[0])], env=ENV)
    assert wrong.exit_code != 0 and "not a captioner model" in str(wrong.exception)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        save_task_model(captioner(tokenizer), Tokenizer(train_wordlevel(WORDS), 9, TokenizerConfig()),
                        tmp_path / "bad")
    with pytest.raises(CheckpointError, match="build_fusion_model"):
        from polymodal.models.dual_encoder import build_tower
        from polymodal.models.fusion import FusionModel

        bare = FusionModel(vqa_config(tokenizer).fusion, build_tower(VISION, 32))
        save_task_model(bare, tokenizer, tmp_path / "bare")


def test_itm_reranking_only_reorders_the_candidates(tmp_path: Path, tokenizer: Tokenizer) -> None:
    import numpy as np

    from polymodal.errors import DataError
    from polymodal.index.api import index
    from polymodal.index.pipeline import IndexOptions
    from polymodal.index.reader import image_ref
    from polymodal.index.rerank import ITMReranker
    from polymodal.index.search import Searcher
    from tests.helpers import save_tiny_model

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    index(str(photos), model=str(save_tiny_model(tmp_path / "dual")), options=IndexOptions(batch_size=4))
    torch.manual_seed(0)
    fusion_dir = tmp_path / "fusion"
    save_task_model(build_fusion_model(vqa_config(tokenizer)), tokenizer, fusion_dir)
    reranker = ITMReranker(fusion_dir)
    with Searcher(tmp_path / "photos.pm") as searcher:
        plain = searcher.search("a red circle", k=8)
        reranked = searcher.search("a red circle", k=8, reranker=reranker, rerank_top=8)
        top3 = searcher.search("a red circle", k=3, reranker=reranker, rerank_top=8)
        assert sorted(h.id for h in reranked) == sorted(h.id for h in plain)  # the same candidates
        log_odds = reranker.log_odds("a red circle", [image_ref(h).read_bytes() for h in plain])
        scale = float(searcher.model.model.logit_params()[0].detach())
        # ordered by ITM log-odds + logit scale x cosine; each hit keeps its cosine and gains P(match)
        combined = {h.id: float(lo) + scale * h.score for h, lo in zip(plain, log_odds, strict=True)}
        assert [h.id for h in reranked] == sorted(combined, key=lambda i: -combined[i])
        cosine = {h.id: h.score for h in plain}
        assert [h.score for h in reranked] == pytest.approx([cosine[h.id] for h in reranked])
        by_id = {h.id: float(1 / (1 + np.exp(-lo))) for h, lo in zip(plain, log_odds, strict=True)}
        assert [h.match for h in reranked] == pytest.approx([by_id[h.id] for h in reranked])
        assert all(h.match is None for h in plain)
        assert [h.id for h in top3] == [h.id for h in reranked[:3]]
        assert [h.id for h in reranked] != [h.id for h in plain]  # it did reorder (random weights)
        # a head that cannot tell the images apart leaves the dual encoder's order
        blind = ITMReranker(fusion_dir)
        blind.log_odds = lambda text, images: np.full(len(images), 2.5)  # type: ignore[method-assign]
        unchanged = searcher.search("a red circle", k=8, reranker=blind, rerank_top=8)
        assert [h.id for h in unchanged] == [h.id for h in plain]
        for bad in ("red + circle", str(photos / "p1.png")):
            with pytest.raises(DataError, match="plain text"):
                searcher.search(bad, k=3, reranker=reranker, rerank_top=8)
        with pytest.raises(DataError, match="at least k=5"):
            searcher.search("a red circle", k=5, reranker=reranker, rerank_top=4)
    result = runner.invoke(app, ["search", str(tmp_path / "photos.pm"), "a red circle", "-k", "3", "--rerank", "8",
                                 "--reranker", str(fusion_dir), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert [h["id"] for h in json.loads(result.stdout)] == [h.id for h in top3]
    alone = runner.invoke(app, ["search", str(tmp_path / "photos.pm"), "a red circle", "--rerank", "8"], env=ENV)
    assert alone.exit_code != 0 and "go together" in str(alone.exception)


@pytest.mark.parametrize("kind", ["cross", "single"])
def test_explain_draws_each_words_attention_over_the_patches(tmp_path: Path, tokenizer: Tokenizer,
                                                             images: list[Path], kind: str) -> None:
    import dataclasses

    import numpy as np

    from polymodal.explain import explain, render
    from polymodal.models.layers import capture_attention

    config = vqa_config(tokenizer)
    config = dataclasses.replace(config, fusion=dataclasses.replace(config.fusion, kind=kind))
    torch.manual_seed(0)
    model = build_fusion_model(config).eval()
    transform = get_transforms(config.preprocess)
    found = explain(model, tokenizer, transform, images[0], "a red circle")
    assert found.words == ["a", "red", "circle"] and found.maps.shape == (3, 4, 4)  # 16 px / patch 4
    np.testing.assert_allclose(found.maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    tokens = tokenizer(["a red circle"])
    with torch.no_grad(), capture_attention(model.encoder) as recorded:
        model.fuse(tokens.input_ids, tokens.attention_mask, model.image_tokens(transform(images[0])[None]))
    last = len(model.encoder.transformer.blocks) - 1
    if kind == "cross":
        raw = recorded[f"transformer.blocks.{last}.cross_attn"][0][0].mean(0)[1:4, 1:]
    else:
        raw = recorded[f"transformer.blocks.{last}.attn"][0][0].mean(0)[1:4, 5 + 1:]  # 5 text tokens first
    expected = (raw / raw.sum(dim=1, keepdim=True)).reshape(3, 4, 4).numpy()
    np.testing.assert_allclose(found.maps, expected, rtol=1e-5, atol=1e-7)

    picture = render(found, tmp_path / "attention.png")
    with Image.open(picture) as drawn:
        assert drawn.size[0] > 4 * drawn.size[1] / 2  # one row: the image and three words
    model_dir = tmp_path / "model"
    save_task_model(model, tokenizer, model_dir)
    result = runner.invoke(app, ["explain", str(model_dir), str(images[0]), "a red circle", "--out",
                                 str(tmp_path / "cli.png"), "--layer", "0"], env=ENV)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.png").stat().st_size > 1000 and "layer 0" in result.stdout
    bad = runner.invoke(app, ["explain", str(model_dir), str(images[0]), "a red circle", "--layer", "5"], env=ENV)
    assert bad.exit_code != 0 and "has 2 layers" in str(bad.exception)
