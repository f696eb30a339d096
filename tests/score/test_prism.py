"""PRISM: preference weights, target direction and scores by hand, and the first-order sign check on a tiny LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsift.score.prism import preference_weights, prism_scores, target_direction

# Two targets: q0 with pbar(y+) = 0.6, pbar(y-) = 0.2 (pi = 0.75); q1 with 0.1 and 0.4 (pi = 0.2).
LOSS_CHOSEN = -np.log([0.6, 0.1])
LOSS_REJECTED = -np.log([0.2, 0.4])
G_CHOSEN = np.array([[1.0, 0, 0], [0, 0, 2]])
G_REJECTED = np.array([[0.0, 1, 0], [0, 0, 0]])
CANDIDATES = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [2, 2, 2]])
# g* = (0.75 * [1, -1, 0] + 0.2 * [0, 0, 2]) / 2
DIRECTION = np.array([0.375, -0.375, 0.2])


def test_preference_weights_by_hand():
    np.testing.assert_allclose(preference_weights(LOSS_CHOSEN, LOSS_REJECTED), [0.75, 0.2], rtol=1e-12)
    np.testing.assert_array_equal(preference_weights(LOSS_CHOSEN, LOSS_REJECTED, uniform=True), [1.0, 1.0])


def test_preference_weights_are_stable_for_large_losses():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        pi = preference_weights([800.0, 0.0, 1000.0, 5.0], [790.0, 1000.0, 0.0, 5.0])
    # pbar = exp(-800) underflows to 0, so the textbook ratio would be 0/0 here.
    np.testing.assert_allclose(pi[0], 1 / (1 + np.exp(10)), rtol=1e-12)
    assert pi[1] == 1.0 and 0.0 <= pi[2] < 1e-300 and pi[3] == 0.5


@pytest.mark.parametrize(
    ("chosen", "rejected", "message"),
    [([1.0, 2.0], [1.0], "one chosen and one rejected"), ([], [], "one chosen"), ([np.nan], [1.0], "finite")],
)
def test_preference_weights_bad_input(chosen, rejected, message):
    with pytest.raises(ValueError, match=message):
        preference_weights(chosen, rejected)


@pytest.mark.parametrize("chunk_rows", [1, None])
def test_target_direction_by_hand(chunk_rows):
    got = target_direction(G_CHOSEN, G_REJECTED, np.array([0.75, 0.2]), chunk_rows)
    np.testing.assert_allclose(got, DIRECTION, rtol=1e-12)


def test_target_direction_bad_input():
    with pytest.raises(ValueError, match="must agree"):
        target_direction(G_CHOSEN, G_REJECTED[:1], np.array([0.75, 0.2]))
    with pytest.raises(ValueError, match="NaN/inf"):
        target_direction(np.array([[np.inf, 0, 0]]), np.zeros((1, 3)), np.ones(1))
    with pytest.raises(ValueError, match="chunk_rows"):
        target_direction(G_CHOSEN, G_REJECTED, np.ones(2), chunk_rows=-1)


def test_raw_scores_by_hand():
    out = prism_scores([CANDIDATES], [G_CHOSEN], [G_REJECTED], LOSS_CHOSEN, LOSS_REJECTED)
    np.testing.assert_allclose(out.scores, [0.375, -0.375, 0.2, 0.4], rtol=1e-6)
    np.testing.assert_allclose(out.preference, [0.75, 0.2])
    np.testing.assert_allclose(out.directions, [DIRECTION])


def test_uniform_and_cosine_by_hand():
    uniform = prism_scores([CANDIDATES], [G_CHOSEN], [G_REJECTED], LOSS_CHOSEN, LOSS_REJECTED, uniform=True)
    # g* = ([1, -1, 0] + [0, 0, 2]) / 2 = [0.5, -0.5, 1]
    np.testing.assert_allclose(uniform.scores, [0.5, -0.5, 1.0, 2.0], rtol=1e-6)
    cosine = prism_scores([CANDIDATES], [G_CHOSEN], [G_REJECTED], LOSS_CHOSEN, LOSS_REJECTED, scoring="cosine")
    norm = np.sqrt(0.375**2 * 2 + 0.2**2)
    expected = [0.375 / norm, -0.375 / norm, 0.2 / norm, 0.4 / (np.sqrt(12) * norm)]
    np.testing.assert_allclose(cosine.scores, expected, rtol=1e-6)


def test_checkpoints_weighted_and_bad_rows():
    second = CANDIDATES.copy()
    second[2] = np.nan
    bad = np.array([False, True, False, False])
    out = prism_scores(
        [CANDIDATES, CANDIDATES * 2],
        [G_CHOSEN, G_CHOSEN],
        [G_REJECTED, G_REJECTED],
        LOSS_CHOSEN,
        LOSS_REJECTED,
        weights=[1.0, 0.5],
    )
    np.testing.assert_allclose(out.scores, 2 * np.array([0.375, -0.375, 0.2, 0.4]), rtol=1e-6)
    out = prism_scores(
        [CANDIDATES, second],
        [G_CHOSEN, G_CHOSEN],
        [G_REJECTED, G_REJECTED],
        LOSS_CHOSEN,
        LOSS_REJECTED,
        weights=[1.0, 0.5],
        bad=bad,
        chunk_rows=3,
    )
    assert out.bad_rows.tolist() == [1, 2]
    assert np.isneginf(out.scores[[1, 2]]).all()
    np.testing.assert_allclose(out.scores[[0, 3]], [0.5625, 0.6], rtol=1e-6)


def test_per_checkpoint_losses_give_each_checkpoint_its_own_weights():
    # checkpoint 1 keeps the losses above (pi = 0.75, 0.2); checkpoint 2 swaps the targets' losses (pi = 0.2, 0.75)
    lp = np.stack([LOSS_CHOSEN, LOSS_CHOSEN[::-1]])
    lm = np.stack([LOSS_REJECTED, LOSS_REJECTED[::-1]])
    out = prism_scores([CANDIDATES, CANDIDATES], [G_CHOSEN, G_CHOSEN], [G_REJECTED, G_REJECTED], lp, lm)
    np.testing.assert_allclose(out.preference, [[0.75, 0.2], [0.2, 0.75]])
    second = (0.2 * np.array([1.0, -1, 0]) + 0.75 * np.array([0, 0, 2])) / 2
    np.testing.assert_allclose(out.directions, [DIRECTION, second])
    np.testing.assert_allclose(out.scores, CANDIDATES @ (DIRECTION + second), rtol=1e-6)
    # one set of losses [M] weighs both checkpoints alike
    shared = prism_scores([CANDIDATES, CANDIDATES], [G_CHOSEN, G_CHOSEN], [G_REJECTED, G_REJECTED], lp[0], lm[0])
    np.testing.assert_allclose(shared.directions, [DIRECTION, DIRECTION])
    with pytest.raises(ValueError, match=r"\[C=2, M\]"):
        prism_scores([CANDIDATES, CANDIDATES], [G_CHOSEN, G_CHOSEN], [G_REJECTED, G_REJECTED], lp[:1], lm[:1])


def test_prism_bad_input():
    with pytest.raises(ValueError, match="checkpoints"):
        prism_scores([CANDIDATES], [G_CHOSEN, G_CHOSEN], [G_REJECTED], LOSS_CHOSEN, LOSS_REJECTED)
    with pytest.raises(ValueError, match="'dot'"):
        prism_scores([CANDIDATES], [G_CHOSEN], [G_REJECTED], LOSS_CHOSEN, LOSS_REJECTED, scoring="dot")
    with pytest.raises(ValueError, match="k=3"):
        prism_scores([CANDIDATES[:, :2]], [G_CHOSEN], [G_REJECTED], LOSS_CHOSEN, LOSS_REJECTED)
    with pytest.raises(ValueError, match="one weight per checkpoint"):
        prism_scores([CANDIDATES], [G_CHOSEN], [G_REJECTED], LOSS_CHOSEN, LOSS_REJECTED, weights=[1.0, 1.0])


def response_loss(model, prompt: torch.Tensor, response: torch.Tensor, mean: bool) -> torch.Tensor:
    """Token-mean (or summed) next-token loss of `response` after `prompt`."""
    ids = torch.cat([prompt, response])[None]
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    nll = torch.nn.functional.cross_entropy(logits, response, reduction="none")
    return nll.mean() if mean else nll.sum()


def flat_grad(model, loss: torch.Tensor) -> np.ndarray:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).numpy()


def target_losses(model, targets) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        lp = np.array([response_loss(model, q, yp, True).item() for q, yp, _ in targets])
        lm = np.array([response_loss(model, q, ym, True).item() for q, _, ym in targets])
    return lp, lm


def test_gradient_step_moves_preference_margin_by_eta_times_score(tiny_model):
    """methods.md section 2 sign check: a step on z changes the pi-weighted mean of log pbar(y+) - log pbar(y-)
    by eta * s(z) to first order (pi held at its reference value)."""
    model = tiny_model.double()
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    targets = [tuple(torch.randint(3, vocab, (n,)) for n in (4, 3, 3)) for _ in range(2)]
    # The candidate is target 0's wanted answer, so its score is clearly positive, not a near-cancellation
    # that finite differences could not resolve.
    cand_prompt, cand_response = targets[0][0], targets[0][1]

    lp, lm = target_losses(model, targets)
    g_plus = np.stack([flat_grad(model, response_loss(model, q, yp, True)) for q, yp, _ in targets])
    g_minus = np.stack([flat_grad(model, response_loss(model, q, ym, True)) for q, _, ym in targets])
    g_cand = flat_grad(model, response_loss(model, cand_prompt, cand_response, False))
    out = prism_scores([g_cand[None]], [g_plus], [g_minus], lp, lm)

    # Central differences: the change of the margin over a step of +-eta, whose error is O(eta^2).
    eta = 1e-4
    margins = []
    for sign in (1.0, -2.0, 1.0):  # step to theta - eta g, then to theta + eta g, then back to theta
        with torch.no_grad():
            offset = 0
            for p in model.parameters():
                p -= sign * eta * torch.from_numpy(g_cand[offset : offset + p.numel()]).view_as(p)
                offset += p.numel()
        lp_step, lm_step = target_losses(model, targets)
        # log pbar = -lbar, so the margin log pbar(y+) - log pbar(y-) is lbar(y-) - lbar(y+).
        margins.append(float(np.mean(out.preference * (lm_step - lp_step))))
    derivative = (margins[0] - margins[1]) / (2 * eta)
    assert out.scores[0] > 0.1
    np.testing.assert_allclose(derivative, out.scores[0], rtol=1e-3)
    np.testing.assert_allclose(margins[2], np.mean(out.preference * (lm - lp)), rtol=1e-9)
