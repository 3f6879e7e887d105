"""Quantization-aware distillation: fake-quantized training changes the student, leaves checkpoints
and the other stages alone, and rounds to the int8 grid."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdframe import fake_quant
from kdframe.runner import run_schedule
from kdframe.testing import tiny_schedule, write_schedule


def test_weights_and_activations_are_rounded_to_8_bits() -> None:
    weight = torch.randn(4, 3, 3, 3)
    quantized = fake_quant.quantize_weight(weight)
    for channel in range(4):
        scale = weight[channel].abs().max() / 127
        levels = torch.round(quantized[channel] / scale)
        assert torch.allclose(levels * scale, quantized[channel], atol=1e-6) and levels.abs().max() <= 127
    assert (quantized - weight).abs().max() <= weight.abs().amax(dim=(1, 2, 3)).max() / 254 + 1e-6
    values = torch.randn(1000)
    rounded = fake_quant.quantize_activation(values)
    assert len(torch.unique(rounded)) <= 256 and (rounded - values).abs().max() <= (values.max() - values.min()) / 255


def test_install_and_remove_keep_the_state_dict_and_pass_gradients() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    keys, x = list(model.state_dict()), torch.randn(2, 1, 8, 8)
    plain = model(x)
    remove = fake_quant.install(model)
    rounded = model(x)
    assert list(model.state_dict()) == keys and not torch.equal(rounded, plain)
    rounded.sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0  # straight through
    remove()
    assert torch.equal(model(x), plain)


def test_the_stage_option_changes_only_the_student(tmp_path: Path) -> None:
    def run(name: str, **changes) -> dict[str, dict[str, torch.Tensor]]:
        schedule = tiny_schedule(**{"logging.loggers": [], "compression.enabled": False, **changes})
        folder, _ = run_schedule(write_schedule(tmp_path, schedule, f"{name}.json"), out=tmp_path / name, quiet=True)
        return {p.parent.name: torch.load(p, weights_only=True)["state_dict"] for p in sorted(folder.glob("stages/*/student.pt"))}

    plain = run("plain")
    aware = run("aware", **{"training.stages": {"student": {"quantization_aware": True}}})
    for stage in ("00-teacher", "01-assistant"):
        assert all(torch.equal(plain[stage][key], aware[stage][key]) for key in plain[stage]), stage
    assert plain["02-student"].keys() == aware["02-student"].keys()  # float weights, same checkpoint layout
    assert not all(torch.equal(plain["02-student"][key], aware["02-student"][key]) for key in plain["02-student"])
