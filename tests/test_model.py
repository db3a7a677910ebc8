"""Tests for clinical_lstm.model.network.MaskedLSTM: shapes, padding invariance, causality, the decay gate and
streaming (continuing from a returned state)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from clinical_lstm.model.network import MaskedLSTM, ModelConfig, StepKernel

V, S, H = 3, 2, 8
COMBOS = list(itertools.product([False, True], [False, True]))  # (decay, attention)


def make_model(decay: bool, attention: bool, num_layers: int = 1, seed: int = 0) -> MaskedLSTM:
    torch.manual_seed(seed)
    m = MaskedLSTM(ModelConfig(hidden_size=H, num_layers=num_layers, dropout=0.3, decay=decay,
                               attention=attention), V, S)
    if decay:  # non-trivial decay parameters so that the gate actually does something
        with torch.no_grad():
            m.decay_w.copy_(torch.tensor([0.5, 1.0, 0.2]))
            m.decay_b.copy_(torch.tensor([-0.2, 0.1, 0.0]))
    return m.eval()


def make_stay(T: int, seed: int):
    """One stay of length T: standardized values, a 0/1 mask, positive elapsed hours, statics."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, T, V, generator=g)
    mask = (torch.rand(1, T, V, generator=g) < 0.5).float()
    delta = torch.rand(1, T, V, generator=g) * 5
    statics = torch.randn(1, S, generator=g)
    return x, mask, delta, statics


def pad_to(t: torch.Tensor, T: int, fill: float = 0.0) -> torch.Tensor:
    """(1, T0, V) -> (1, T, V), extra steps set to ``fill``."""
    out = torch.full((1, T, t.shape[2]), fill)
    out[:, : t.shape[1]] = t
    return out


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(("decay", "attention"), COMBOS)
def test_shapes(decay, attention, num_layers):
    m = make_model(decay, attention, num_layers)
    B, T = 4, 6
    x, mask, delta = torch.randn(B, T, V), torch.ones(B, T, V), torch.rand(B, T, V)
    statics = torch.randn(B, S)
    lengths = torch.tensor([6, 1, 3, 6])
    logit, step_logits = m(x, mask, delta, statics, lengths)
    assert logit.shape == (B,)
    assert step_logits.shape == (B, T)
    assert m.step_inputs(x, mask, delta, statics).shape == (B, T, 3 * V + S)
    assert torch.isfinite(logit).all() and torch.isfinite(step_logits).all()


@pytest.mark.parametrize(("decay", "attention"), COMBOS)
def test_padding_invariance(decay, attention):
    m = make_model(decay, attention)
    a = make_stay(3, seed=1)
    b = make_stay(5, seed=2)
    long_stay = make_stay(9, seed=3)
    with torch.no_grad():
        alone_a, steps_a = m(*a, torch.tensor([3]))
        alone_b, steps_b = m(*b, torch.tensor([5]))
        alone_long, _ = m(*long_stay, torch.tensor([9]))
        # a and b padded with zero steps to T = 9, batched with a stay of length 9
        batch = [torch.cat([pad_to(s[k], 9) for s in (a, b)] + [long_stay[k]]) for k in range(3)]
        statics = torch.cat([a[3], b[3], long_stay[3]])
        logit, step_logits = m(*batch, statics, torch.tensor([3, 5, 9]))
    torch.testing.assert_close(logit, torch.cat([alone_a, alone_b, alone_long]), atol=1e-6, rtol=0)
    torch.testing.assert_close(step_logits[0, :3], steps_a[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(step_logits[1, :5], steps_b[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("decay", "attention"), COMBOS)
def test_padding_content_is_ignored(decay, attention):
    # Whatever sits in the padding (not only zeros), a stay's logit depends on its valid steps only.
    m = make_model(decay, attention)
    x, mask, delta, statics = make_stay(4, seed=5)
    with torch.no_grad():
        ref, _ = m(x, mask, delta, statics, torch.tensor([4]))
        garbage, _ = m(pad_to(x, 7, 50.0), pad_to(mask, 7, 1.0), pad_to(delta, 7, 30.0), statics,
                          torch.tensor([4]))
    torch.testing.assert_close(garbage, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("decay", "attention"), COMBOS)
@pytest.mark.parametrize("t", [1, 3, 5])
def test_causality(decay, attention, t):
    m = make_model(decay, attention)
    x, mask, delta, statics = make_stay(6, seed=7)
    x2, mask2, delta2 = x.clone(), mask.clone(), delta.clone()
    x2[:, t] += 3.0
    mask2[:, t] = 1 - mask2[:, t]
    delta2[:, t] += 2.0
    lengths = torch.tensor([6])
    with torch.no_grad():
        _, before = m(x, mask, delta, statics, lengths)
        _, after = m(x2, mask2, delta2, statics, lengths)
    torch.testing.assert_close(after[:, :t], before[:, :t], atol=0, rtol=0)
    assert not torch.allclose(after[:, t], before[:, t])  # the change is visible from step t on


def test_decay_gate_matches_docstring_formula():
    m = make_model(decay=True, attention=False)
    with torch.no_grad():
        m.decay_w.copy_(torch.tensor([0.5, -1.0, 2.0]))
        m.decay_b.copy_(torch.tensor([-1.0, 0.0, 0.5]))
    x = torch.tensor([[[2.0, -1.0, 3.0], [2.0, 4.0, -2.0]]])  # (1, 2, 3)
    mask = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    delta = torch.tensor([[[4.0, 2.0, 1.0], [1.0, 0.0, 0.25]]])
    statics = torch.tensor([[0.7, -0.3]])
    with torch.no_grad():
        inp = m.step_inputs(x, mask, delta, statics)
    # x_hat = m x + (1 - m) exp(-relu(w delta + b)) x
    # step 0: v0 unobserved, 0.5*4 - 1 = 1 -> 2 e^-1 ; v1 unobserved, -1*2 + 0 = -2 -> relu 0 -> -1 ;
    #         v2 observed -> 3
    # step 1: v0 unobserved, 0.5*1 - 1 = -0.5 -> relu 0 -> 2 ; v1 observed -> 4 ;
    #         v2 unobserved, 2*0.25 + 0.5 = 1 -> -2 e^-1
    expected_x = torch.tensor([[[2 * math.exp(-1), -1.0, 3.0], [2.0, 4.0, -2 * math.exp(-1)]]])
    torch.testing.assert_close(inp[..., :V], expected_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(inp[..., V:2 * V], mask, atol=0, rtol=0)
    expected_logd = torch.tensor([[[math.log(5), math.log(3), math.log(2)], [math.log(2), 0.0, math.log(1.25)]]])
    torch.testing.assert_close(inp[..., 2 * V:3 * V], expected_logd, atol=1e-6, rtol=0)
    torch.testing.assert_close(inp[..., 3 * V:], statics.expand(2, S).unsqueeze(0), atol=0, rtol=0)


def test_without_decay_values_pass_through():
    m = make_model(decay=False, attention=False)
    assert not hasattr(m, "decay_w")
    x, mask, delta, statics = make_stay(4, seed=11)
    with torch.no_grad():
        inp = m.step_inputs(x, mask, delta, statics)
    torch.testing.assert_close(inp[..., :V], x, atol=0, rtol=0)


def test_decay_learns_from_its_initial_values():
    """At w = b = 0 the ReLU's gradient is 0 and the decay never moved (it trained like decay = false)."""
    torch.manual_seed(0)
    m = MaskedLSTM(ModelConfig(hidden_size=H, decay=True), V, S).train()
    x, mask, delta, statics = make_stay(5, seed=13)
    mask.zero_()
    logit, _ = m(x, mask, delta, statics, torch.tensor([5]))
    logit.sum().backward()
    assert (m.decay_w.grad != 0).all() and (m.decay_b.grad != 0).all()


def test_decay_gate_gradient_reaches_parameters():
    m = make_model(decay=True, attention=False).train()
    x, mask, delta, statics = make_stay(5, seed=13)
    mask.zero_()  # all unobserved: every value goes through the gate
    logit, _ = m(x, mask, delta, statics, torch.tensor([5]))
    logit.sum().backward()
    assert m.decay_w.grad is not None and m.decay_w.grad.abs().sum() > 0
    assert m.decay_b.grad is not None and m.decay_b.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", [dict(decay=True, attention=False), dict(decay=True, attention=True),
                                 dict(decay=False, attention=False, num_layers=2)])
@pytest.mark.parametrize("chunks", [(1,) * 10, (3, 1, 6), (10,)])
def test_step_kernel_equals_forward(cfg, chunks):
    """The stream's numpy fast path, generated from three networks' weights, steps through any cut of a stay
    to the ensemble-mean logit that ``MaskedLSTM.forward`` gives for every prefix of it."""
    nets = [make_model(**cfg) for _ in range(3)]
    for k, net in enumerate(nets):  # distinct weights per member
        torch.manual_seed(100 + k)
        with torch.no_grad():
            for p in net.parameters():
                p.uniform_(-0.5, 0.5)
    T = sum(chunks)
    g = torch.Generator().manual_seed(17)
    x, delta = torch.randn(1, T, V, generator=g), torch.rand(1, T, V, generator=g) * 4
    mask = (torch.rand(1, T, V, generator=g) < 0.4).float()
    statics = torch.randn(1, S, generator=g)
    with torch.no_grad():
        want = [torch.stack([n(x[:, :t], mask[:, :t], delta[:, :t], statics, torch.tensor([t]))[0]
                             for n in nets]).mean().item() for t in range(1, T + 1)]
    kernel = StepKernel(nets)
    state, got, start = kernel.initial_state(), [], 0
    for k in chunks:
        piece = [a[0, start:start + k].numpy() for a in (x, mask, delta)]
        state, logits = kernel.run(*piece, statics[0].numpy(), state)
        got.append(logits.mean())
        start += k
    ends = np.cumsum(chunks) - 1
    np.testing.assert_allclose(got, np.asarray(want)[ends], atol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(("decay", "attention"), COMBOS)
def test_from_gates_equals_forward(decay, attention, num_layers):
    """SHAP's path (the first layer's pre-activations in, the hand-written recurrence with tanh written as a
    sigmoid) gives ``forward``'s logits for stays of different lengths, saturated gates included; the full
    recurrence gives every step's hidden state."""
    from clinical_lstm.model.network import _recur

    net = make_model(decay, attention, num_layers)
    with torch.no_grad():
        net.lstm.weight_ih_l0.mul_(4)  # pre-activations of +-10 and more: sigmoid and tanh in their flat tails
    g = torch.Generator().manual_seed(3)
    B, T = 6, 9
    x, delta = torch.randn(B, T, V, generator=g) * 3, torch.rand(B, T, V, generator=g) * 5
    mask = (torch.rand(B, T, V, generator=g) < 0.5).float()
    statics, lengths = torch.randn(B, S, generator=g), torch.tensor([9, 1, 4, 9, 7, 2])
    with torch.no_grad():
        want, _ = net(x, mask, delta, statics, lengths)
        pre = net.input_gates(net.step_inputs(x, mask, delta, statics))
        assert pre.abs().max() > 10
        weights = [p.clone() for p in net.parameters()]
        got = net.from_gates(pre.clone(), statics, lengths)
        assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))  # never written
        hs = _recur(pre.clone(), net.lstm.weight_hh_l0)  # (B, T, H) the first layer's states
        want_hs, _ = net.lstm(net.step_inputs(x, mask, delta, statics)) if num_layers == 1 else (None, None)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-6)
    if want_hs is not None:
        np.testing.assert_allclose(hs.numpy(), want_hs.numpy(), atol=2e-6)
    net.train()
    with pytest.raises(RuntimeError, match="eval"):
        net.from_gates(pre, statics, lengths)


def test_logit_without_attention_is_step_logit_at_last_valid_step():
    m = make_model(decay=True, attention=False)
    B, T = 3, 5
    g = torch.Generator().manual_seed(23)
    x, mask, delta = torch.randn(B, T, V, generator=g), torch.ones(B, T, V), torch.rand(B, T, V, generator=g)
    statics = torch.randn(B, S, generator=g)
    with torch.no_grad():
        logit, steps = m(x, mask, delta, statics, torch.tensor([5, 1, 3]))
    torch.testing.assert_close(logit, torch.stack([steps[0, 4], steps[1, 0], steps[2, 2]]), atol=0, rtol=0)


def test_model_config_to_dict():
    cfg = ModelConfig(hidden_size=16, decay=False, attention=True)
    assert cfg.to_dict() == {"hidden_size": 16, "num_layers": 1, "dropout": 0.2, "decay": False, "attention": True,
                             "summaries": True, "end_members": True, "stack_knots": [4.0, 12.0, 24.0, 48.0]}


def test_rows_batches_are_the_copied_fold_batches():
    """A fold as :class:`Rows` (indexes into the whole tensors) yields the very batches a copied fold would."""
    from clinical_lstm.model.network import Rows, batch_of, n_stays

    g = torch.Generator().manual_seed(0)
    data = {"x": torch.randn(30, 5, 4, generator=g), "lengths": torch.arange(30), "statics": torch.randn(30, 3, generator=g)}
    fold = torch.tensor([3, 29, 0, 17, 8, 8])
    copied, rows = batch_of(data, fold), Rows(data, fold.numpy())
    assert n_stays(rows) == 6
    for idx in (torch.tensor([5, 0, 2]), slice(1, 4)):
        got, want = batch_of(rows, idx), batch_of(copied, idx)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def random_stays(N: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    """N random stays of T steps as :func:`~clinical_lstm.model.network.predict_logits` takes them (lengths 1..T)."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(N, T, V, generator=g), "mask": (torch.rand(N, T, V, generator=g) < 0.5).float(),
            "delta": torch.rand(N, T, V, generator=g) * 5, "statics": torch.randn(N, S, generator=g),
            "lengths": torch.randint(1, T + 1, (N,), generator=g)}


@pytest.mark.parametrize("decay,attention", COMBOS)
def test_ensemble_prediction_equals_its_members_one_by_one(decay, attention):
    """The ensemble's logits (predict_logits, in batches that split the stays unevenly) are the mean of the
    members' own forward passes over all stays at once, per stay and per step."""
    from clinical_lstm.model.network import predict_logits

    nets = [make_model(decay, attention, seed=s) for s in range(3)]
    if decay:  # members whose decay differs
        with torch.no_grad():
            nets[1].decay_w.mul_(3)
    data = random_stays(11, 6, seed=7)
    with torch.no_grad():
        outs = [n(data["x"], data["mask"], data["delta"], data["statics"], data["lengths"]) for n in nets]
    want = torch.stack([o[0] for o in outs]).mean(0).numpy()
    want_steps = torch.stack([o[1] for o in outs]).mean(0).numpy()
    np.testing.assert_allclose(predict_logits(nets, data, batch_size=4), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(predict_logits(nets, data, batch_size=4, steps=True), want_steps, rtol=0, atol=1e-6)
    assert np.abs(np.stack([o[0].numpy() for o in outs]).std(0)).max() > 1e-3  # the members differ


def test_ensemble_prediction_with_and_without_decay_mixed():
    """Networks that share step inputs but not the decay (none, decay, none, decay): each gets its own value
    columns, whichever network wrote them before it."""
    from clinical_lstm.model.network import predict_logits

    nets = [make_model(decay, False, seed=s) for s, decay in enumerate([False, True, False, True])]
    data = random_stays(7, 5, seed=8)
    with torch.no_grad():
        want = torch.stack([n(data["x"], data["mask"], data["delta"], data["statics"], data["lengths"])[0]
                            for n in nets]).mean(0).numpy()
    for order in (nets, nets[::-1]):
        np.testing.assert_allclose(predict_logits(order, data, batch_size=3), want, rtol=0, atol=1e-6)
