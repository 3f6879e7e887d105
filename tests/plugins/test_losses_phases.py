"""Tests of the loss terms with a pre-training phase or a memory bank: ``ft``, ``ab`` and ``crd``.

Values are compared with independent NumPy float64 computations (explicit convolutions, BatchNorm
and loops), never with the torch functions the terms call. One end-to-end run per method goes
through the real runner on synthetic data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import kdframe_losses
from kdframe import ComponentError, LayerError, LossTerm, ModelOutputs, StepOutputs, hookimpl
from kdframe.losses import BuildContext
from kdframe.plugins import create_plugins
from kdframe.runner import run_schedule
from tests.conftest import tiny_schedule, write_schedule

# -- helpers --------------------------------------------------------------------------------------

SPECS = {
    component.name: component.spec
    for component in create_plugins(load_entry_points=False, plugins=[("kdframe_losses", kdframe_losses)]).registry.iter("loss")
}
PAIR = [{"student": "s", "teacher": "t"}]


def make(name: str, **params) -> LossTerm:
    spec = SPECS[name]
    return spec.factory(spec.params(**params))


def fixed(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def leaf(array, requires_grad=True) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=torch.float64, requires_grad=requires_grad)


def build(term: LossTerm, student: dict, teacher: dict, num_train_samples: int = 0) -> None:
    term.build(
        BuildContext(
            student_shapes={key: value.shape for key, value in student.items()},
            teacher_shapes={key: value.shape for key, value in teacher.items()},
            num_train_samples=num_train_samples,
            num_classes=3,
        )
    )


def step(student: dict, teacher: dict | None, indices=None, n: int | None = None) -> StepOutputs:
    n = n if n is not None else next(iter(student.values())).shape[0]
    return StepOutputs(
        student=ModelOutputs(torch.zeros(n, 3), dict(student)),
        teachers=[] if teacher is None else [ModelOutputs(torch.zeros(n, 3), dict(teacher))],
        labels=torch.zeros(n, dtype=torch.long),
        indices=indices,
    )


def value_of(tensor: torch.Tensor) -> float:
    return float(tensor.detach())


def np_(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy().copy()


def np_conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """3x3 convolution, stride 1, zero padding 1, with explicit sums over the kernel offsets."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, weight.shape[0], h, w))
    for dy in range(3):
        for dx in range(3):
            window = padded[:, :, dy : dy + h, dx : dx + w]
            out += np.einsum("oc,nchw->nohw", weight[:, :, dy, dx], window)
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def np_conv_transpose3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Transposed 3x3 conv, stride 1, padding 1, by scattering every input value (its definition)."""
    n, _, h, w = x.shape
    out = np.zeros((n, weight.shape[1], h + 2, w + 2))
    for dy in range(3):
        for dx in range(3):
            out[:, :, dy : dy + h, dx : dx + w] += np.einsum("co,nchw->nohw", weight[:, :, dy, dx], x)
    return out[:, :, 1:-1, 1:-1] + bias[None, :, None, None]


def np_batchnorm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    mean = x.mean(axis=axes).reshape(shape)
    var = x.var(axis=axes).reshape(shape)  # biased, as BatchNorm normalises in training
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


def np_lrelu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.1 * x)


def np_avg_pool(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    n, c, h, w = maps.shape
    fh, fw = h // size[0], w // size[1]
    return maps.reshape(n, c, size[0], fh, size[1], fw).mean(axis=(3, 5))


# -- ft -------------------------------------------------------------------------------------------


def np_paraphraser_encoder(paraphraser, x):
    convs = [m for m in paraphraser.encoder if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        x = np_lrelu(np_conv3x3(x, np_(conv.weight), np_(conv.bias)))
    return x


def np_paraphraser(paraphraser, x):
    x = np_paraphraser_encoder(paraphraser, x)
    for conv in [m for m in paraphraser.decoder if isinstance(m, torch.nn.ConvTranspose2d)]:
        x = np_lrelu(np_conv_transpose3x3(x, np_(conv.weight), np_(conv.bias)))
    return x


def np_translator(translator, x):
    layers = list(translator)
    for conv, bn in zip(layers[0::3], layers[1::3]):
        x = np_lrelu(np_batchnorm_train(np_conv3x3(x, np_(conv.weight), np_(conv.bias)), np_(bn.weight), np_(bn.bias)))
    return x


def np_ft(term, students, teachers, reduction="mean"):
    losses = []
    for translator, paraphraser, s, t in zip(term.translators, term.paraphrasers, students, teachers):
        fs, ft = np_translator(translator, s), np_paraphraser_encoder(paraphraser, t)
        size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
        fs, ft = np_avg_pool(fs, size), np_avg_pool(ft, size)
        total = 0.0
        for n in range(fs.shape[0]):
            a, b = fs[n].ravel(), ft[n].ravel()
            a, b = a / math.sqrt(sum(v * v for v in a)), b / math.sqrt(sum(v * v for v in b))
            total += sum(abs(u - v) for u, v in zip(a, b))
        losses.append(total / fs.shape[0] / (fs[0].size if reduction == "mean" else 1))
    return sum(losses) / len(losses)


def ft_case(student_shape=(3, 4, 4, 4), teacher_shape=(3, 6, 4, 4), seed=0, **params):
    torch.manual_seed(seed)
    term = make("ft", layers=PAIR, **params)
    s = leaf(fixed(seed, *student_shape))
    t = leaf(fixed(seed + 1, *teacher_shape))
    build(term, {"s": s}, {"t": t})
    term.double()
    return term, s, t


def test_ft_defaults_and_spec():
    params = SPECS["ft"].params(layers=PAIR)
    assert (params.rate, params.pretrain_epochs, params.reconstruction, params.reduction) == (0.5, 30, "l1", "mean")
    assert SPECS["ft"].family == "feature" and SPECS["ft"].reference and SPECS["ft"].layers
    assert SPECS["ft"].example["pretrain_epochs"] == 1
    term = make("ft", **SPECS["ft"].example)
    assert term.pretrain_epochs == 1 and term.pretrain_trains_student is False
    assert term.student_layers == ("features.2",) and term.teacher_layers == ("features.4",)
    with pytest.raises(ValidationError):
        SPECS["ft"].params(layers=[])
    with pytest.raises(ValidationError):
        SPECS["ft"].params(layers=PAIR, pretrain_epochs=0)


def test_ft_builds_paraphraser_and_translator_of_the_factor_size():
    term, s, t = ft_case(rate=0.5)
    paraphraser, translator = term.paraphrasers[0], term.translators[0]
    assert paraphraser.encoder(t).shape == (3, 3, 4, 4)  # int(0.5 * 6) = 3 factor channels
    assert paraphraser(t).shape == t.shape
    assert translator(s).shape == (3, 3, 4, 4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in paraphraser.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in translator.modules()) == 3
    term_small, _, _ = ft_case(rate=0.1)
    assert term_small.paraphrasers[0].encoder(t).shape[1] == 1  # at least one channel


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_ft_value_matches_numpy(reduction):
    term, s, t = ft_case(reduction=reduction)
    term.end_pretraining()
    expected = np_ft(term, [np_(s)], [np_(t)], reduction)
    assert value_of(term(step({"s": s}, {"t": t}))) == pytest.approx(expected, rel=1e-9)


def test_ft_batchmean_is_mean_times_factor_size():
    term, s, t = ft_case()
    outputs = step({"s": s}, {"t": t})
    mean = value_of(term(outputs))
    term.reduction = "batchmean"
    assert value_of(term(outputs)) == pytest.approx(mean * 3 * 4 * 4, rel=1e-9)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((2, 4, 4, 4), (2, 6, 2, 2)), ((2, 4, 2, 2), (2, 6, 4, 4)), ((2, 4, 4, 2), (2, 6, 2, 4))],
)
def test_ft_pools_the_larger_factor_to_the_smaller(student_shape, teacher_shape):
    term, s, t = ft_case(student_shape, teacher_shape)
    expected = np_ft(term, [np_(s)], [np_(t)])
    assert value_of(term(step({"s": s}, {"t": t}))) == pytest.approx(expected, rel=1e-9)


def test_ft_averages_over_pairs():
    torch.manual_seed(0)
    layers = [{"student": "s1", "teacher": "t1"}, {"student": "s2", "teacher": "t2"}]
    term = make("ft", layers=layers)
    student = {"s1": leaf(fixed(0, 2, 3, 4, 4)), "s2": leaf(fixed(1, 2, 2, 2, 2))}
    teacher = {"t1": leaf(fixed(2, 2, 4, 4, 4)), "t2": leaf(fixed(3, 2, 2, 2, 2))}
    build(term, student, teacher)
    term.double()
    expected = np_ft(term, [np_(student["s1"]), np_(student["s2"])], [np_(teacher["t1"]), np_(teacher["t2"])])
    assert value_of(term(step(student, teacher))) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("reconstruction", ["l1", "mse"])
def test_ft_pretrain_loss_is_the_paraphraser_reconstruction(reconstruction):
    term, s, t = ft_case(reconstruction=reconstruction)
    difference = np_paraphraser(term.paraphrasers[0], np_(t)) - np_(t)
    expected = np.abs(difference).mean() if reconstruction == "l1" else (difference**2).mean()
    assert value_of(term.pretrain_loss(step({"s": s}, {"t": t}))) == pytest.approx(expected, rel=1e-9)


def test_ft_pretrain_loss_trains_only_the_paraphraser():
    term, s, t = ft_case()
    value = term.pretrain_loss(step({"s": s}, {"t": t}))
    value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in term.paraphrasers.parameters())
    assert any(p.grad.abs().sum() > 0 for p in term.paraphrasers.parameters())
    assert all(p.grad is None for p in term.translators.parameters())
    assert s.grad is None and t.grad is None
    # A few optimiser steps over everything the trainer would give it: only the paraphraser moves,
    # and its reconstruction loss goes down.
    translator_before = [p.detach().clone() for p in term.translators.parameters()]
    paraphraser_before = [p.detach().clone() for p in term.paraphrasers.parameters()]
    optimizer = torch.optim.Adam(term.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = term.pretrain_loss(step({"s": s}, {"t": t}))
        first = value_of(loss) if first is None else first
        loss.backward()
        optimizer.step()
    assert value_of(term.pretrain_loss(step({"s": s}, {"t": t}))) < first
    assert all(torch.equal(a, b) for a, b in zip(translator_before, term.translators.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(paraphraser_before, term.paraphrasers.parameters()))


def test_ft_end_pretraining_freezes_the_paraphraser():
    term, s, t = ft_case()
    term.end_pretraining()
    assert all(not p.requires_grad for p in term.paraphrasers.parameters())
    assert all(p.requires_grad for p in term.translators.parameters())
    term.train()  # what the trainer calls every epoch
    assert not term.paraphrasers.training and term.translators.training
    before = [p.detach().clone() for p in term.paraphrasers.parameters()]
    optimizer = torch.optim.SGD([p for p in term.parameters() if p.requires_grad], lr=0.1)
    term(step({"s": s}, {"t": t})).backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, term.paraphrasers.parameters()))


def test_ft_gradients_reach_student_and_translator_never_teacher_or_paraphraser():
    term, s, t = ft_case()
    term.end_pretraining()
    term(step({"s": s}, {"t": t})).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert all(p.grad is not None for p in term.translators.parameters())
    assert all(p.grad is None for p in term.paraphrasers.parameters())
    assert t.grad is None


def test_ft_forward_never_trains_an_unfrozen_paraphraser():
    term, s, t = ft_case()
    term(step({"s": s}, {"t": t})).backward()
    assert all(p.grad is None for p in term.paraphrasers.parameters())


def test_ft_batch_of_one():
    term, s, t = ft_case((1, 4, 2, 2), (1, 6, 2, 2))
    term.end_pretraining()
    value = term(step({"s": s}, {"t": t}))
    assert value_of(value) == pytest.approx(np_ft(term, [np_(s)], [np_(t)]), rel=1e-9)
    value.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.isfinite(term.pretrain_loss(step({"s": s}, {"t": t})))
    term1, s1, t1 = ft_case((1, 4, 1, 1), (1, 6, 1, 1))
    with pytest.raises(LayerError, match="BatchNorm"):
        term1(step({"s": s1}, {"t": t1}))


def test_ft_errors():
    term = make("ft", layers=PAIR)
    with pytest.raises(LayerError, match="feature maps"):
        build(term, {"s": torch.zeros(2, 5)}, {"t": torch.zeros(2, 5)})
    with pytest.raises(LayerError, match="'s'"):
        build(term, {"other": torch.zeros(2, 3, 4, 4)}, {"t": torch.zeros(2, 3, 4, 4)})
    s, t = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    with pytest.raises(ComponentError, match="before build"):
        term(step({"s": s}, {"t": t}))
    build(term, {"s": s}, {"t": t})
    with pytest.raises(ComponentError, match="teacher"):
        term(step({"s": s}, None))
    with pytest.raises(ComponentError, match="teacher"):
        term.pretrain_loss(step({"s": s}, None))


# -- ab -------------------------------------------------------------------------------------------


def np_connector(connector, x):
    layer, norm = connector[0], connector[1]
    weight = np_(layer.weight)
    if x.ndim == 4:
        out = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x)
    else:
        out = x @ weight.T
    return np_batchnorm_train(out, np_(norm.weight), np_(norm.bias))


def np_ab_pair(source, target, margin):
    total = 0.0
    for s, t in zip(source.ravel().tolist(), target.ravel().tolist()):
        if s > -margin and t <= 0:
            total += (s + margin) ** 2
        if s <= margin and t > 0:
            total += (s - margin) ** 2
    return total / source.shape[0] / 1000.0


def np_ab(term, students, teachers, margin=1.0, weighting="mean"):
    values = []
    for connector, s, t in zip(term.connectors, students, teachers):
        source = np_connector(connector, s)
        if source.ndim == 4 and source.shape[2:] != t.shape[2:]:
            size = (min(source.shape[2], t.shape[2]), min(source.shape[3], t.shape[3]))
            source, t = np_avg_pool(source, size), np_avg_pool(t, size)
        values.append(np_ab_pair(source, t, margin))
    if weighting == "mean":
        return sum(values) / len(values)
    return sum(value * 2.0 ** (i - len(values) + 1) for i, value in enumerate(values))


def ab_case(student_shape=(3, 4, 3, 3), teacher_shape=(3, 5, 3, 3), seed=0, **params):
    torch.manual_seed(seed)
    term = make("ab", layers=PAIR, **params)
    s = leaf(fixed(seed, *student_shape))
    t = leaf(fixed(seed + 1, *teacher_shape))
    build(term, {"s": s}, {"t": t})
    term.double()
    return term, s, t


def test_ab_defaults_and_spec():
    params = SPECS["ab"].params(layers=PAIR)
    assert (params.margin, params.pretrain_epochs, params.pair_weighting) == (1.0, 30, "mean")
    assert SPECS["ab"].family == "feature" and SPECS["ab"].reference and SPECS["ab"].layers
    term = make("ab", **SPECS["ab"].example)
    assert term.pretrain_epochs == 1 and term.pretrain_trains_student is True
    assert make("ab", layers=PAIR, pretrain_epochs=0).pretrain_epochs == 0


def test_ab_connector_is_a_1x1_conv_and_batchnorm_initialised_as_the_authors():
    torch.manual_seed(0)
    term = make("ab", layers=PAIR)
    build(term, {"s": torch.zeros(2, 64, 3, 3)}, {"t": torch.zeros(2, 128, 3, 3)})
    conv, norm = term.connectors[0]
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
    assert conv.weight.shape == (128, 64, 1, 1) and isinstance(norm, torch.nn.BatchNorm2d)
    assert value_of(conv.weight.std()) == pytest.approx(math.sqrt(2.0 / 128), rel=0.05)
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


@pytest.mark.parametrize("margin", [1.0, 0.5, 0.0])
def test_ab_value_matches_loops(margin):
    term, s, t = ab_case(margin=margin)
    expected = np_ab(term, [np_(s)], [np_(t)], margin)
    value = term(step({"s": s}, {"t": t}))
    assert value_of(value) == pytest.approx(expected, rel=1e-9)
    assert value_of(term.pretrain_loss(step({"s": s}, {"t": t}))) == pytest.approx(expected, rel=1e-9)


def test_ab_hand_checked_single_value():
    # A connector that passes the single channel through: BatchNorm of [a, -a] over the batch is
    # [1, -1] (up to eps). Teacher signs [-, +]: the first value (1 > -1, t <= 0) costs (1+1)^2 = 4,
    # the second (-1 <= 1, t > 0) costs (-1-1)^2 = 4; (4 + 4) / (2 * 1000).
    term = make("ab", layers=PAIR)
    s, t = leaf([[3.0], [-3.0]]), leaf([[-1.0], [2.0]])
    build(term, {"s": s}, {"t": t})
    term.double()
    with torch.no_grad():
        term.connectors[0][0].weight.fill_(1.0)
    scale = 3.0 / math.sqrt(9.0 + 1e-5)
    assert value_of(term(step({"s": s}, {"t": t}))) == pytest.approx(2 * (scale + 1) ** 2 / 2000, rel=1e-12)


def test_ab_is_zero_when_the_boundaries_agree_beyond_the_margin():
    term = make("ab", layers=PAIR)
    s, t = leaf([[3.0], [-3.0]]), leaf([[2.0], [-1.0]])
    build(term, {"s": s}, {"t": t})
    term.double()
    with torch.no_grad():
        term.connectors[0][0].weight.fill_(2.0)  # BN output [1, -1]: exactly at the margin -> 0
    assert value_of(term(step({"s": s}, {"t": t}))) == pytest.approx(0.0, abs=1e-8)


def test_ab_vectors_and_spatial_pooling():
    term, s, t = ab_case((4, 6), (4, 3))
    assert isinstance(term.connectors[0][0], torch.nn.Linear)
    assert value_of(term(step({"s": s}, {"t": t}))) == pytest.approx(np_ab(term, [np_(s)], [np_(t)]), rel=1e-9)
    for shapes in (((2, 3, 4, 4), (2, 5, 2, 2)), ((2, 3, 2, 2), (2, 5, 4, 4))):
        term, s, t = ab_case(*shapes)
        assert value_of(term(step({"s": s}, {"t": t}))) == pytest.approx(np_ab(term, [np_(s)], [np_(t)]), rel=1e-9)


@pytest.mark.parametrize("weighting", ["mean", "authors"])
def test_ab_pair_weighting(weighting):
    torch.manual_seed(0)
    layers = [{"student": f"s{i}", "teacher": f"t{i}"} for i in range(3)]
    term = make("ab", layers=layers, pair_weighting=weighting)
    student = {f"s{i}": leaf(fixed(i, 2, 2, 3, 3)) for i in range(3)}
    teacher = {f"t{i}": leaf(fixed(10 + i, 2, 3, 3, 3)) for i in range(3)}
    build(term, student, teacher)
    term.double()
    expected = np_ab(term, [np_(v) for v in student.values()], [np_(v) for v in teacher.values()], weighting=weighting)
    assert value_of(term(step(student, teacher))) == pytest.approx(expected, rel=1e-9)


def test_ab_gradients_reach_student_and_connector_never_teacher():
    term, s, t = ab_case()
    term(step({"s": s}, {"t": t})).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.connectors.parameters())
    assert t.grad is None


def test_ab_pretraining_trains_the_student_and_end_pretraining_keeps_the_connector():
    term, s, t = ab_case()
    term.pretrain_loss(step({"s": s}, {"t": t})).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    term.end_pretraining()
    assert all(p.requires_grad for p in term.parameters())


def test_ab_batch_of_one():
    term, s, t = ab_case((1, 4, 3, 3), (1, 5, 3, 3))
    value = term(step({"s": s}, {"t": t}))
    assert value_of(value) == pytest.approx(np_ab(term, [np_(s)], [np_(t)]), rel=1e-9)
    value.backward()
    assert torch.isfinite(s.grad).all()
    term, s, t = ab_case((1, 4), (1, 5))
    with pytest.raises(LayerError, match="BatchNorm"):
        term(step({"s": s}, {"t": t}))


def test_ab_errors():
    term = make("ab", layers=PAIR)
    with pytest.raises(LayerError, match="pre-ReLU|ReLU"):
        build(term, {"s": torch.zeros(2, 3, 4, 4)}, {"t": torch.zeros(2, 5)})
    s, t = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    with pytest.raises(ComponentError, match="before build"):
        term(step({"s": s}, {"t": t}))
    build(term, {"s": s}, {"t": t})
    with pytest.raises(ComponentError, match="teacher"):
        term(step({"s": s}, None))


# -- crd ------------------------------------------------------------------------------------------


def np_embed(head, x):
    out = x.reshape(x.shape[0], -1) @ np_(head.linear.weight).T + np_(head.linear.bias)
    return out / np.sqrt((out**2).sum(axis=1, keepdims=True))


def np_nce(scores_exp, z, num_samples):
    batch, k = scores_exp.shape[0], scores_exp.shape[1] - 1
    noise = k / num_samples
    total = 0.0
    for n in range(batch):
        p = [value / z for value in scores_exp[n]]
        total += math.log(p[0] / (p[0] + noise + 1e-7))
        total += sum(math.log(noise / (value + noise + 1e-7)) for value in p[1:])
    return -total / batch


def crd_case(n_train=6, batch=3, k=3, feat_dim=4, student_shape=(5,), teacher_shape=(2, 2, 2), **params):
    torch.manual_seed(0)
    term = make("crd", layers=PAIR, nce_k=k, feat_dim=feat_dim, **params)
    s = leaf(fixed(0, batch, *student_shape))
    t = leaf(fixed(1, batch, *teacher_shape))
    build(term, {"s": s}, {"t": t}, num_train_samples=n_train)
    term.double()
    return term, s, t


def test_crd_defaults_and_spec():
    params = SPECS["crd"].params(layers=PAIR)
    assert (params.feat_dim, params.nce_k, params.nce_t, params.momentum, params.seed) == (128, 16384, 0.07, 0.5, 0)
    assert SPECS["crd"].reference and SPECS["crd"].layers and SPECS["crd"].example["layers"]
    with pytest.raises(ValidationError):
        SPECS["crd"].params(layers=PAIR * 2)  # exactly one pair
    with pytest.raises(ValidationError):
        SPECS["crd"].params(layers=[])


def test_crd_banks_are_initialised_uniformly_and_deterministically():
    term, _, _ = crd_case(n_train=200, feat_dim=12)
    bound = 1.0 / math.sqrt(12 / 3)
    for bank in (term.memory_student, term.memory_teacher):
        assert bank.shape == (200, 12)
        assert float(bank.abs().max()) <= bound
        assert float(bank.abs().max()) > 0.9 * bound
    again, _, _ = crd_case(n_train=200, feat_dim=12)
    assert torch.equal(term.memory_student, again.memory_student)
    assert not torch.equal(term.memory_student, term.memory_teacher)


def test_crd_value_matches_loops_with_injected_negatives():
    term, s, t = crd_case()
    indices = torch.tensor([4, 0, 2])
    negatives = torch.tensor([[1, 3, 5], [2, 2, 4], [0, 1, 5]])
    term.sample_negatives = lambda idx: negatives
    bank_s, bank_t = np_(term.memory_student), np_(term.memory_teacher)
    v_s, v_t = np_embed(term.embed_student, np_(s)), np_embed(term.embed_teacher, np_(t))
    contrast = np.concatenate([indices.numpy()[:, None], negatives.numpy()], axis=1)
    exp_s = np.array([[math.exp(bank_t[j] @ v_s[n] / 0.07) for j in contrast[n]] for n in range(3)])
    exp_t = np.array([[math.exp(bank_s[j] @ v_t[n] / 0.07) for j in contrast[n]] for n in range(3)])
    z_s, z_t = exp_s.mean() * 6, exp_t.mean() * 6
    expected = np_nce(exp_s, z_s, 6) + np_nce(exp_t, z_t, 6)
    value = term(step({"s": s}, {"t": t}, indices=indices))
    assert value_of(value) == pytest.approx(expected, rel=1e-9)
    assert float(term.z[0]) == pytest.approx(z_s, rel=1e-12) and float(term.z[1]) == pytest.approx(z_t, rel=1e-12)

    # The second call reads the updated banks and keeps Z constant.
    bank_s, bank_t = np_(term.memory_student), np_(term.memory_teacher)
    exp_s = np.array([[math.exp(bank_t[j] @ v_s[n] / 0.07) for j in contrast[n]] for n in range(3)])
    exp_t = np.array([[math.exp(bank_s[j] @ v_t[n] / 0.07) for j in contrast[n]] for n in range(3)])
    expected = np_nce(exp_s, z_s, 6) + np_nce(exp_t, z_t, 6)
    assert value_of(term(step({"s": s}, {"t": t}, indices=indices))) == pytest.approx(expected, rel=1e-9)
    assert float(term.z[0]) == pytest.approx(z_s, rel=1e-12)


def test_crd_updates_the_banks_at_the_indices_with_momentum():
    term, s, t = crd_case(momentum=0.25)
    indices = torch.tensor([5, 1, 3])
    bank_s, bank_t = np_(term.memory_student), np_(term.memory_teacher)
    v_s, v_t = np_embed(term.embed_student, np_(s)), np_embed(term.embed_teacher, np_(t))
    term(step({"s": s}, {"t": t}, indices=indices))
    for bank, new, v in ((bank_s, term.memory_student, v_s), (bank_t, term.memory_teacher, v_t)):
        for row in range(6):
            if row in indices.tolist():
                n = indices.tolist().index(row)
                mixed = 0.25 * bank[row] + 0.75 * v[n]
                np.testing.assert_allclose(np_(new[row]), mixed / np.linalg.norm(mixed), rtol=1e-12)
            else:
                np.testing.assert_array_equal(np_(new[row]), bank[row])


def test_crd_eval_mode_neither_updates_banks_nor_sets_z():
    term, s, t = crd_case()
    indices = torch.tensor([0, 1, 2])
    term.eval()
    with pytest.raises(ComponentError, match="training mode"):
        term(step({"s": s}, {"t": t}, indices=indices))
    term.train()
    term(step({"s": s}, {"t": t}, indices=indices))
    term.eval()
    before = term.memory_student.clone()
    term(step({"s": s}, {"t": t}, indices=indices))
    assert torch.equal(before, term.memory_student)


def test_crd_negatives_are_seeded_never_the_anchor_and_leave_the_global_rng_alone():
    term, _, _ = crd_case(n_train=50, k=49, seed=7)
    indices = torch.arange(50)
    state = torch.get_rng_state()
    draws = term.sample_negatives(indices)
    assert torch.equal(state, torch.get_rng_state())
    assert draws.shape == (50, 49) and draws.dtype == torch.int64
    assert int(draws.min()) >= 0 and int(draws.max()) < 50
    assert not (draws == indices[:, None]).any()
    assert len(torch.unique(draws)) == 50  # every sample is somebody's negative
    again, _, _ = crd_case(n_train=50, k=49, seed=7)
    assert torch.equal(draws, again.sample_negatives(indices))
    other, _, _ = crd_case(n_train=50, k=49, seed=8)
    assert not torch.equal(draws, other.sample_negatives(indices))


def test_crd_state_dict_carries_the_negatives_generator_for_resume():
    term, _, _ = crd_case(n_train=50, k=10, seed=7)
    indices = torch.arange(5)
    term.sample_negatives(indices)
    saved = term.state_dict()
    expected = term.sample_negatives(indices)
    resumed, _, _ = crd_case(n_train=50, k=10, seed=7)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.sample_negatives(indices), expected)


def test_crd_caps_nce_k_at_the_training_split_with_a_warning():
    with pytest.warns(UserWarning, match="nce_k"):
        term, s, t = crd_case(n_train=6, k=16384)
    assert term.k == 5
    assert term.sample_negatives(torch.tensor([0, 1, 2])).shape == (3, 5)
    assert torch.isfinite(term(step({"s": s}, {"t": t}, indices=torch.tensor([0, 1, 2]))))


def test_crd_gradients_reach_student_and_both_heads_never_teacher():
    term, s, t = crd_case()
    term(step({"s": s}, {"t": t}, indices=torch.tensor([0, 1, 2]))).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.parameters())
    assert t.grad is None
    assert not term.memory_student.requires_grad and not term.memory_teacher.requires_grad


def test_crd_batch_of_one():
    term, s, t = crd_case(batch=1)
    negatives = torch.tensor([[1, 2, 3]])
    term.sample_negatives = lambda idx: negatives
    bank_s, bank_t = np_(term.memory_student), np_(term.memory_teacher)
    v_s, v_t = np_embed(term.embed_student, np_(s)), np_embed(term.embed_teacher, np_(t))
    exp_s = np.array([[math.exp(bank_t[j] @ v_s[0] / 0.07) for j in [4, 1, 2, 3]]])
    exp_t = np.array([[math.exp(bank_s[j] @ v_t[0] / 0.07) for j in [4, 1, 2, 3]]])
    expected = np_nce(exp_s, exp_s.mean() * 6, 6) + np_nce(exp_t, exp_t.mean() * 6, 6)
    value = term(step({"s": s}, {"t": t}, indices=torch.tensor([4])))
    assert value_of(value) == pytest.approx(expected, rel=1e-9)
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_crd_errors():
    term = make("crd", layers=PAIR, nce_k=2)
    s, t = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ComponentError, match="num_train_samples"):
        build(term, {"s": s}, {"t": t}, num_train_samples=0)
    with pytest.raises(ComponentError, match="before build"):
        term(step({"s": s}, {"t": t}, indices=torch.tensor([0, 1])))
    build(term, {"s": s}, {"t": t}, num_train_samples=4)
    with pytest.raises(ComponentError, match="indices"):
        term(step({"s": s}, {"t": t}))
    with pytest.raises(ComponentError, match=r"\[0, 4\)"):
        term(step({"s": s}, {"t": t}, indices=torch.tensor([0, 4])))
    with pytest.raises(ComponentError, match="teacher"):
        term(step({"s": s}, None, indices=torch.tensor([0, 1])))


# -- end to end through the runner ----------------------------------------------------------------


class EpochMetrics:
    """Records every epoch's metrics by stage."""

    def __init__(self) -> None:
        self.metrics: list[tuple[str, dict]] = []

    @hookimpl
    def kdframe_on_epoch_end(self, run, stage, state, control) -> None:
        self.metrics.append((stage.name, dict(state.metrics)))


def run_direct(tmp_path, losses, **changes):
    schedule = tiny_schedule(
        **{
            "training.epochs": 1,
            "logging.loggers": [],
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "distill.losses": losses,
            **changes,
        }
    )
    del schedule["models"]["assistant"]
    recorder = EpochMetrics()
    plugins = create_plugins(plugins=[("epoch-metrics", recorder)])
    _, results = run_schedule(write_schedule(tmp_path, schedule), out=tmp_path / "run", quiet=True, plugins=plugins)
    return results, recorder.metrics


def finite_losses(metrics, stage):
    values = [value for name, epoch in metrics if name == stage for key, value in epoch.items() if key.startswith("train/loss")]
    return values and all(math.isfinite(value) for value in values)


def test_ft_end_to_end_runs_a_pretraining_stage(tmp_path):
    losses = [
        {"name": "cross_entropy", "weight": 1.0},
        {"name": "ft", "weight": 1.0, "params": {"layers": [{"student": "features.2", "teacher": "features.4"}], "pretrain_epochs": 1}},
    ]
    results, metrics = run_direct(tmp_path, losses)
    assert [result.stage for result in results] == ["teacher", "student-pretrain", "student"]
    assert results[1].epochs_run == 1
    for stage in ("student-pretrain", "student"):
        assert finite_losses(metrics, stage)
    pretrain = [epoch for name, epoch in metrics if name == "student-pretrain"][0]
    assert set(key for key in pretrain if key.startswith("train/loss/")) == {"train/loss/ft"}


def test_ab_end_to_end_runs_an_initialisation_stage(tmp_path):
    losses = [
        {"name": "cross_entropy", "weight": 1.0},
        {"name": "ab", "weight": 0.0, "params": {"layers": [{"student": "features.2.1", "teacher": "features.4.1"}], "pretrain_epochs": 1}},
    ]
    results, metrics = run_direct(tmp_path, losses)
    assert [result.stage for result in results] == ["teacher", "student-pretrain", "student"]
    for stage in ("student-pretrain", "student"):
        assert finite_losses(metrics, stage)


def test_crd_end_to_end_trains(tmp_path):
    losses = [
        {"name": "cross_entropy", "weight": 1.0},
        {"name": "crd", "weight": 0.8, "params": {"layers": [{"student": "flatten", "teacher": "flatten"}], "nce_k": 64}},
    ]
    results, metrics = run_direct(tmp_path, losses, **{"training.epochs": 2})
    assert [result.stage for result in results] == ["teacher", "student"]
    assert finite_losses(metrics, "student")
    crd = [epoch["train/loss/crd"] for name, epoch in metrics if name == "student"]
    assert len(crd) == 2 and all(value > 0 for value in crd)
