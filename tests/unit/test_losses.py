"""Every loss against a hand-computed example and a naive loop reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.losses import ClipLoss, SigLipLoss, TripletLoss, VSEppLoss
from polymodal.models.dual_encoder import DualEncoderOutput

ONE = torch.tensor(1.0)
IMAGE = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXT = torch.tensor([[1.0, 0.0], [0.8, 0.6]])  # distances image->text: [[0, .2], [1, .4]]


def _sigmoid_log(x: float) -> float:
    return math.log(1 / (1 + math.exp(-x)))


# --------------------------------------------------------------------------- by hand


def test_clip_by_hand() -> None:
    # logits = I: each row's loss is -log(e / (e + 1)) = log(1 + 1/e).
    loss = ClipLoss().compute_loss_from_embeddings(IMAGE, IMAGE, ONE)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_siglip_by_hand() -> None:
    # Two positives with logit 1, two negatives with logit 0, divided by B = 2.
    loss = SigLipLoss().compute_loss_from_embeddings(IMAGE, IMAGE, ONE, torch.tensor(0.0))
    assert loss.item() == pytest.approx(-(_sigmoid_log(1) + _sigmoid_log(0)), abs=1e-6)
    with pytest.raises(ValueError, match="logit bias"):
        SigLipLoss().compute_loss_from_embeddings(IMAGE, IMAGE, ONE)


@pytest.mark.parametrize(("mining", "expected"), [("all", 0.2), ("hard", 0.1), ("semi-hard", 0.1)])
def test_triplet_by_hand(mining: str, expected: float) -> None:
    # Only text anchor 1 violates: d(t1, i1) = .4, d(t1, i0) = .2 -> .4 - .2 + .2 = .4.
    # all: mean over active triplets -> image side 0, text side .4; hard/semi-hard:
    # mean over anchors -> text side .2. Both directions averaged.
    loss = TripletLoss(margin=0.2, mining=mining).compute_loss_from_embeddings(IMAGE, TEXT, ONE)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_semi_hard_picks_the_closest_negative_beyond_the_positive() -> None:
    from polymodal.losses.ranking import mined_triplet_loss

    # One anchor: positive at .3; negatives at .2 (harder than the positive) and .4
    # (semi-hard: farther, but within the margin .2).
    dist = torch.tensor([[0.3, 0.2, 0.4]])
    positive = torch.tensor([[True, False, False]])
    assert mined_triplet_loss(dist, positive, 0.2, "semi-hard").item() == pytest.approx(0.1)  # .3 - .4 + .2
    assert mined_triplet_loss(dist, positive, 0.2, "hard").item() == pytest.approx(0.3)  # .3 - .2 + .2
    assert mined_triplet_loss(dist, positive, 0.2, "all").item() == pytest.approx((0.3 + 0.1) / 2)
    # No negative beyond the positive: the farthest negative is used (TF Addons' rule).
    closer = torch.tensor([[0.5, 0.2, 0.4]])
    assert mined_triplet_loss(closer, positive, 0.2, "semi-hard").item() == pytest.approx(0.3)  # .5 - .4 + .2


def test_triplet_chunking_does_not_change_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    import polymodal.losses.ranking as ranking

    image, text, ids = _batch(8, [0, 1, 1, 2, 3, 3, 3, 4])
    expected = {m: TripletLoss(mining=m).compute_loss_from_embeddings(image, text, ONE, None, ids)  # type: ignore[arg-type]
                for m in ("all", "semi-hard")}
    monkeypatch.setattr(ranking, "_TRIPLETS_PER_CHUNK", 70)  # one anchor row per chunk
    for mining, value in expected.items():
        chunked = TripletLoss(mining=mining).compute_loss_from_embeddings(image, text, ONE, None, ids)  # type: ignore[arg-type]
        torch.testing.assert_close(chunked, value)


def test_vsepp_by_hand() -> None:
    # sim = [[1, .8], [0, .6]]; only text 1 against image 0 violates: .2 - .6 + .8 = .4.
    for hardest in (True, False):
        loss = VSEppLoss(margin=0.2, hardest=hardest).compute_loss_from_embeddings(IMAGE, TEXT, ONE)
        assert loss.item() == pytest.approx(0.2, abs=1e-6)


# --------------------------------------------------------------------------- naive references


def _batch(seed: int, groups: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    n = len(groups) if groups else 6
    image = F.normalize(torch.randn(n, 5, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, 5, generator=g), dim=-1)
    return image, text, torch.tensor(groups) if groups else None


def _same(groups: torch.Tensor | None, i: int, j: int) -> bool:
    return i == j if groups is None else bool(groups[i] == groups[j])


def naive_clip(image, text, scale, groups):  # type: ignore[no-untyped-def]
    n, total = len(image), 0.0
    for direction in (0, 1):
        for i in range(n):
            scores = [scale * float((image[i] if direction == 0 else text[i])
                                    @ (text[j] if direction == 0 else image[j])) for j in range(n)]
            positives = [j for j in range(n) if _same(groups, i, j)]
            log_z = math.log(sum(math.exp(s) for s in scores))
            total += -sum(scores[j] - log_z for j in positives) / len(positives)
    return total / (2 * n)


def naive_siglip(image, text, scale, bias, groups):  # type: ignore[no-untyped-def]
    n, total = len(image), 0.0
    for i in range(n):
        for j in range(n):
            z = 1 if _same(groups, i, j) else -1
            total += -_sigmoid_log(z * (scale * float(image[i] @ text[j]) + bias))
    return total / n


def naive_triplet(image, text, margin, mining, groups):  # type: ignore[no-untyped-def]
    def one_direction(anchors, candidates):  # type: ignore[no-untyped-def]
        n = len(anchors)
        d = [[1 - float(anchors[a] @ candidates[c]) for c in range(n)] for a in range(n)]
        losses = []
        for a in range(n):
            pos = [c for c in range(n) if _same(groups, a, c)]
            neg = [c for c in range(n) if not _same(groups, a, c)]
            if not neg:
                continue
            if mining == "hard":
                losses.append(max(0.0, max(d[a][p] for p in pos) - min(d[a][q] for q in neg) + margin))
                continue
            for p in pos:
                if mining == "all":
                    losses += [max(0.0, d[a][p] - d[a][q] + margin) for q in neg]
                else:
                    farther = [d[a][q] for q in neg if d[a][q] > d[a][p]]
                    chosen = min(farther) if farther else max(d[a][q] for q in neg)
                    losses.append(max(0.0, d[a][p] - chosen + margin))
        if mining == "all":
            active = [x for x in losses if x > 0]
            return sum(active) / max(1, len(active))
        return sum(losses) / len(losses)

    return (one_direction(image, text) + one_direction(text, image)) / 2


def naive_vsepp(image, text, margin, hardest, groups):  # type: ignore[no-untyped-def]
    n, total = len(image), 0.0
    for i in range(n):
        own = float(image[i] @ text[i])
        neg = [j for j in range(n) if not _same(groups, i, j)]
        cost_t = [max(0.0, margin - own + float(image[i] @ text[j])) for j in neg] or [0.0]
        cost_i = [max(0.0, margin - own + float(image[j] @ text[i])) for j in neg] or [0.0]
        total += (max(cost_t) + max(cost_i)) if hardest else (sum(cost_t) + sum(cost_i))
    return total / n


GROUPINGS = [None, [0, 1, 1, 2, 3, 3, 3, 4]]


@pytest.mark.parametrize("groups", GROUPINGS)
def test_clip_matches_naive(groups: list[int] | None) -> None:
    image, text, ids = _batch(1, groups)
    loss = ClipLoss().compute_loss_from_embeddings(image, text, torch.tensor(7.0), None, ids)
    assert loss.item() == pytest.approx(naive_clip(image, text, 7.0, ids), rel=1e-5)


@pytest.mark.parametrize("groups", GROUPINGS)
def test_siglip_matches_naive(groups: list[int] | None) -> None:
    image, text, ids = _batch(2, groups)
    loss = SigLipLoss().compute_loss_from_embeddings(image, text, torch.tensor(10.0), torch.tensor(-3.0), ids)
    assert loss.item() == pytest.approx(naive_siglip(image, text, 10.0, -3.0, ids), rel=1e-5)


@pytest.mark.parametrize("groups", GROUPINGS)
@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
def test_triplet_matches_naive(groups: list[int] | None, mining: str) -> None:
    image, text, ids = _batch(3, groups)
    loss = TripletLoss(margin=0.5, mining=mining).compute_loss_from_embeddings(image, text, ONE, None, ids)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(naive_triplet(image, text, 0.5, mining, ids), rel=1e-5)


def test_euclidean_triplet_uses_euclidean_distance() -> None:
    image, text, _ = _batch(4, None)
    cosine = TripletLoss(margin=0.3, mining="hard", distance="cosine")
    euclid = TripletLoss(margin=0.3, mining="hard", distance="euclidean")
    # On unit vectors ||a - b|| = sqrt(2 (1 - cos)): the orderings agree, the values differ.
    a = cosine.compute_loss_from_embeddings(image, text, ONE)
    b = euclid.compute_loss_from_embeddings(image, text, ONE)
    d, eye = torch.cdist(image, text), torch.eye(6, dtype=torch.bool)

    def side(dist: torch.Tensor) -> torch.Tensor:
        return (dist.diagonal() - dist.masked_fill(eye, 9).amin(1) + 0.3).clamp(min=0).mean()

    hard = (side(d) + side(d.T)) / 2
    assert b.item() == pytest.approx(hard.item(), rel=1e-5) and a.item() != pytest.approx(b.item())


@pytest.mark.parametrize("groups", GROUPINGS)
@pytest.mark.parametrize("hardest", [True, False])
def test_vsepp_matches_naive(groups: list[int] | None, hardest: bool) -> None:
    image, text, ids = _batch(5, groups)
    loss = VSEppLoss(margin=0.2, hardest=hardest).compute_loss_from_embeddings(image, text, ONE, None, ids)
    assert loss.item() == pytest.approx(naive_vsepp(image, text, 0.2, hardest, ids), rel=1e-5)


# --------------------------------------------------------------------------- interface


def test_losses_take_model_outputs_and_compute_in_float32() -> None:
    image, text, _ = _batch(6, None)
    out = DualEncoderOutput(image.bfloat16(), text.bfloat16(), torch.tensor(5.0), torch.tensor(-2.0))
    for loss in (ClipLoss(), SigLipLoss(), TripletLoss(), VSEppLoss()):
        value = loss(out)
        assert value.dtype == torch.float32 and torch.isfinite(value)
    with pytest.raises(ValueError, match="both image and text"):
        ClipLoss()(DualEncoderOutput(image, None, ONE, None))


def test_gradients_flow_to_embeddings_and_scale() -> None:
    image, text, _ = _batch(7, None)
    image.requires_grad_(True)
    scale = torch.tensor(3.0, requires_grad=True)
    ClipLoss().compute_loss_from_embeddings(image, text, scale).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0 and scale.grad is not None


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mining"):
        TripletLoss(mining="easy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown distance"):
        TripletLoss(distance="manhattan")  # type: ignore[arg-type]
