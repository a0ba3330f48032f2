"""The captioning decoder: causal and padding-blind teacher forcing, beam search that is
greedy at width 1 and exhaustive when wide enough, and a model that learns a tiny set."""

import itertools
import math

import pytest
import torch

from polymodal.config import CaptionerConfig, PreprocessConfig, ViTConfig
from polymodal.errors import ConfigError
from polymodal.models.captioner import Captioner
from tests.helpers import tiny_transformer

PAD, BOS, EOS = 0, 1, 2


def config(vocab: int = 12, context: int = 8) -> CaptionerConfig:
    vision = ViTConfig(image_size=16, patch_size=4, transformer=tiny_transformer())
    return CaptionerConfig(vision=vision, vocab_size=vocab, context_length=context, transformer=tiny_transformer(),
                           preprocess=PreprocessConfig(image_size=16))


def model(seed: int = 0, **kw: int) -> Captioner:
    torch.manual_seed(seed)
    return Captioner(config(**kw)).eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_teacher_forcing_is_causal_and_ignores_padding() -> None:
    m = model()
    memory = m.encode_image(pixels(2))
    ids = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 8, EOS, PAD, PAD]])
    mask = ids != PAD
    logits = m.logits(ids, mask, memory)
    assert logits.shape == (2, 5, 12)
    changed = ids.clone()
    changed[:, 3] = 9  # a later token never changes an earlier prediction
    torch.testing.assert_close(m.logits(changed, mask, memory)[0, :3], logits[0, :3])
    loss = m(pixels(2), ids, mask)
    noisy = ids.clone()
    noisy[1, 3:] = 4  # what stands in the padding is neither read nor predicted
    assert float(loss.detach()) > 0 and torch.equal(m(pixels(2), noisy, mask), loss)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_of_width_one_is_greedy(seed: int) -> None:
    m = model(seed)
    images = pixels(4, seed)
    assert m.generate(images, beam_size=1) == [m.generate(images[i:i + 1], beam_size=1)[0] for i in range(4)]
    for penalty in (0.0, 0.6, 1.0):
        assert [m._beam(m.encode_image(images[i:i + 1]), 8, 1, penalty) for i in range(4)] == m.generate(images)


def test_a_wide_beam_finds_the_best_caption_by_exhaustive_search() -> None:
    m = model(3, vocab=5, context=4)  # tokens: pad, bos, eos, a, b; up to 3 generated tokens
    image = pixels(1, 3)
    with torch.no_grad():
        memory = m.encode_image(image)

    def score(tokens: list[int]) -> float:  # summed log-probability of tokens after <bos>
        ids = torch.tensor([[BOS, *tokens]])
        with torch.no_grad():
            log_probs = m.logits(ids[:, :-1], None, memory).log_softmax(-1)[0]
        return float(sum(log_probs[t, tok] for t, tok in enumerate(tokens)))

    for penalty in (0.0, 1.0, 2.0):
        hypotheses = [[*body, EOS] for n in range(3) for body in itertools.product(range(5), repeat=n)]
        hypotheses += [list(body) for body in itertools.product(range(5), repeat=3) if EOS not in body]
        hypotheses = [h for h in hypotheses if EOS not in h[:-1]]
        best = max(hypotheses, key=lambda h: score(h) / len(h) ** penalty)
        found = m.generate(image, beam_size=200, length_penalty=penalty)[0]
        assert found == [t for t in best if t != EOS], penalty
        assert math.isfinite(score(best))


def test_the_captioner_learns_a_tiny_set_and_decodes_it_back() -> None:
    torch.manual_seed(0)
    m = Captioner(config(vocab=12, context=6))
    colours = [(1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0), (1.0, 1.0, -1.0)]
    images = torch.stack([torch.tensor(c)[:, None, None].expand(3, 16, 16) for c in colours])
    images = images + 0.05 * torch.randn_like(images)
    captions = [[BOS, 3, 4, EOS], [BOS, 5, 6, 7, EOS], [BOS, 8, EOS], [BOS, 9, 10, 11, EOS]]
    ids = torch.zeros(4, 5, dtype=torch.long)
    for row, caption in enumerate(captions):
        ids[row, :len(caption)] = torch.tensor(caption)
    mask = ids != PAD
    optimiser = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(80):
        loss = m(images, ids, mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    m.eval()
    expected = [c[1:-1] for c in captions]
    assert float(loss.detach()) < 0.05
    assert m.generate(images) == expected
    assert m.generate(images, beam_size=3, length_penalty=0.6) == expected


def test_bad_configs_and_inputs_are_clear() -> None:
    with pytest.raises(ConfigError, match="three different tokens"):
        CaptionerConfig(vision=config().vision, vocab_size=10, context_length=5, transformer=tiny_transformer(),
                        preprocess=PreprocessConfig(image_size=16), bos_token_id=0)
    m = model()
    with pytest.raises(ValueError, match="exceed the context length"):
        m.logits(torch.ones(1, 9, dtype=torch.long), None, m.encode_image(pixels(1)))
    with pytest.raises(ValueError, match="beam_size"):
        m.generate(pixels(1), beam_size=0)
