"""The model directory: save -> load round trips, ids, and every way loading can fail."""

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polymodal.checkpoint import model_id, read_card
from polymodal.config import TokenizerConfig
from polymodal.errors import CheckpointError, ConfigError, TokenizerError
from polymodal.factory import create_model, get_tokenizer, load_model, save_model
from polymodal.models import DualEncoder
from polymodal.tokenizer import Tokenizer, train_bpe
from tests.helpers import tiny_config

Saved = tuple[DualEncoder, Tokenizer, Path]
CAPTIONS = ["a red circle", "a blue square", "two green triangles", "a small yellow star"] * 4


@pytest.fixture
def saved(tmp_path: Path) -> Saved:
    model = DualEncoder(tiny_config()).eval()
    tokenizer = Tokenizer(train_bpe(CAPTIONS, 300), 12, TokenizerConfig())
    path = tmp_path / "model"
    save_model(model, tokenizer, path, training={"data": "shapes"}, metrics={"r@1": 0.5})
    return model, tokenizer, path


def test_round_trip_gives_identical_embeddings(saved: Saved) -> None:
    model, tokenizer, path = saved
    loaded = load_model(path, device="cpu")
    images = torch.randn(2, 3, 16, 16)
    tokens = get_tokenizer(path)(["a red circle", "a yellow star"])
    assert torch.equal(tokens.input_ids, tokenizer(["a red circle", "a yellow star"]).input_ids)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens.input_ids, tokens.attention_mask),
                           model.encode_text(tokens.input_ids, tokens.attention_mask))
    assert not loaded.training


def test_config_json_records_id_architecture_training_and_metrics(saved: Saved) -> None:
    model, tokenizer, path = saved
    card = read_card(path)
    assert card.model_id == model_id(model.state_dict()) and len(card.model_id) == 12
    assert card.config == dataclasses.replace(model.config, tokenizer=tokenizer.config)
    assert card.config.tokenizer.pad_token == "<pad>"  # the resolved pad token is recorded
    assert card.training == {"data": "shapes"} and card.metrics == {"r@1": 0.5}
    raw = json.loads((path / "config.json").read_text())
    assert raw["architecture"] == "dual_encoder" and raw["polymodal_format"] == 1
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_model_id_changes_with_any_weight() -> None:
    model = DualEncoder(tiny_config())
    before = model_id(model.state_dict())
    with torch.no_grad():
        model.text.head.weight[0, 0] += 1e-3
    assert model_id(model.state_dict()) != before


def test_existing_directory_is_not_overwritten_by_accident(saved: Saved) -> None:
    model, tokenizer, path = saved
    with pytest.raises(CheckpointError, match="already exists"):
        save_model(model, tokenizer, path)
    with torch.no_grad():
        model.logit_scale += 1
    new_id = save_model(model, tokenizer, path, overwrite=True)
    assert read_card(path).model_id == new_id
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_pickles_are_refused(saved: Saved) -> None:
    model, _, path = saved
    weights = path / "model.safetensors"
    torch.save(model.state_dict(), weights)  # a zip-pickle under the safetensors name
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path)
    weights.write_bytes(pickle.dumps({"w": [1.0]}))  # a raw pickle
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path)
    weights.unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="found pickle pytorch_model.bin"):
        load_model(path)


def test_wrong_shapes_and_missing_keys_are_named(saved: Saved) -> None:
    _, _, path = saved
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state["text.head.weight"] = torch.zeros(5, 5)
    del state["visual.norm.bias"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "missing (1): visual.norm.bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "text.head.weight: checkpoint (5, 5) vs model (24, 32)" in message


def test_modified_weights_do_not_match_the_recorded_id(saved: Saved) -> None:
    _, _, path = saved
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state["logit_scale"] = state["logit_scale"] + 1
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="do not match the recorded model id"):
        load_model(path)


def test_truncated_weights_and_bad_config_are_clear_errors(saved: Saved) -> None:
    _, _, path = saved
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(path)
    card = json.loads((path / "config.json").read_text())
    card["model"]["vision"]["depth"] = 3
    (path / "config.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) \['depth'\]"):
        load_model(path)
    (path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)
    card["polymodal_format"] = 99
    (path / "config.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="upgrade polymodal"):
        load_model(path)


def test_missing_directory_and_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown model preset 'vit-huge'"):
        create_model("vit-huge")


def test_minilm_model_directory_is_self_contained(tmp_path: Path) -> None:
    model = create_model("vit-tiny-64-minilm", device="cpu").eval()
    tokenizer = get_tokenizer(model.config)
    save_model(model, tokenizer, tmp_path / "m")
    card = json.loads((tmp_path / "m" / "config.json").read_text())
    hf_config = card["model"]["text"]["hf_config"]
    assert hf_config["model_type"] == "bert" and hf_config["hidden_size"] == 384
    loaded = load_model(tmp_path / "m", device="cpu")
    tokens = get_tokenizer(tmp_path / "m")(["a dog"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens.input_ids, tokens.attention_mask),
                                   model.encode_text(tokens.input_ids, tokens.attention_mask))


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    model = DualEncoder(tiny_config())  # vocab 300, context 12, pools at token 2
    backend = train_bpe(CAPTIONS, 300)
    with pytest.raises(TokenizerError, match="context length 8 != text tower context length 12"):
        save_model(model, Tokenizer(backend, 8, TokenizerConfig()), tmp_path / "a")
    with pytest.raises(TokenizerError, match="tokenizer has 400 tokens but the text tower embeds only 300"):
        big = train_bpe([f"word{i} thing{i}" for i in range(200)] * 2, 400)
        save_model(model, Tokenizer(big, 12, TokenizerConfig()), tmp_path / "b")
    backend.post_processor = None  # no <sot>/<eot> around texts
    with pytest.raises(TokenizerError, match="pools at end token 2"):
        save_model(model, Tokenizer(backend, 12, TokenizerConfig()), tmp_path / "c")
    assert not list(tmp_path.iterdir())


def test_safetensors_headers_that_look_like_pickles_still_load(tmp_path: Path) -> None:
    """The first byte of a safetensors file is its header length; 0x80 must not read as pickle."""
    from polymodal.checkpoint import read_weights

    state = {"w": torch.arange(4.0)}
    for pad in range(300):
        path = tmp_path / f"w{pad}.safetensors"
        save_file(state, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header starting with 0x80")
    assert torch.equal(read_weights(path)["w"], state["w"])


def test_save_over_a_plain_file_and_interrupted_saves_are_explained(saved: Saved) -> None:
    model, tokenizer, path = saved
    blocker = path.parent / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_model(model, tokenizer, blocker, overwrite=True)
    path.rename(path.parent / ".model.old-1234abcd")  # as if killed between the two renames
    with pytest.raises(CheckpointError, match=r"previous version in .*\.model\.old-1234abcd"):
        load_model(path)


def test_max_length_padding_tokenizers_fit(tmp_path: Path) -> None:
    model = DualEncoder(tiny_config())
    tokenizer = Tokenizer(train_bpe(CAPTIONS, 300), 12, TokenizerConfig(padding="max_length"))
    save_model(model, tokenizer, tmp_path / "m")
    assert get_tokenizer(tmp_path / "m")("a red circle").input_ids.shape == (1, 12)
