"""`brainseg models` and the FLOP counter behind it."""

from __future__ import annotations

import json

import torch
from helpers_models import FIVE, PINNED_PARAMS
from torch import nn

from brainseg.cli import main
from brainseg.models import count_flops, count_parameters, create_model


def hand_counted_flops(model: nn.Module, x: torch.Tensor) -> int:
    """2 × multiply-adds of every convolution, from the shapes seen by forward hooks."""
    total = 0

    def hook(m, inp, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, nn.ConvTranspose2d):  # every input pixel is spread over a k×k patch
            total += 2 * inp[0].numel() * m.out_channels * k // m.groups
        else:  # every output pixel sums a k×k×c_in window
            total += 2 * out.numel() * m.in_channels * k // m.groups

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_count_flops_counts_a_multiply_add_as_two():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    assert count_flops(conv, 16, in_channels=3) == 2 * (8 * 16 * 16) * (3 * 3 * 3)
    for name in ("unet", "segnet"):
        model = create_model(name, width=4)
        flops = count_flops(model, 64)
        assert model.training  # the counter restores the mode it found
        assert flops == hand_counted_flops(model, torch.zeros(1, 3, 64, 64))


def test_models_json_lists_every_model_with_counts(capsys):
    assert main(["models", "--json", "--size", "64"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][: len(FIVE)] == list(FIVE)  # the five, in registration order
    for row in rows:
        # Counted on the meta device by the command; the pins were checked against the papers'
        # reference networks (see helpers_models).
        assert row["params"] == PINNED_PARAMS[row["name"]]
        assert row["flops"] > 0 and row["size"] == 64 and row["in_channels"] == 3
        assert row["width"] == row["default_width"]
        assert 64 % row["size_divisor"] == 0


def test_models_table_width_and_channels(capsys):
    assert main(["models", "--size", "128", "--width", "8", "--in-channels", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("GFLOPs@128x128x1" in line for line in lines)
    for name in FIVE:
        # A real (not meta) model with the same options has the count the table prints on its row.
        row = next(line for line in lines if line.split()[:1] == [name])
        assert f"{count_parameters(create_model(name, width=8, in_channels=1)):,}" in row


def test_models_bad_size_is_one_clear_line(capsys):
    assert main(["models", "--size", "100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brainseg models: error:") and "nearest valid size: 96×96" in err
