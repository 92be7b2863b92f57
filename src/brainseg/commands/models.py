"""`brainseg models`: list the registered architectures with parameter counts and forward FLOPs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from brainseg.commands._common import positive_int

DESCRIPTION = (
    "List every registered architecture with its parameter count, forward FLOPs for one slice "
    "(a multiply-add counts as 2 FLOPs; convolutions and matrix products only), the size divisor "
    "its input height and width must be a multiple of, and its default width. Models are built on "
    "PyTorch's meta device, so full-size counts take no memory or time."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=positive_int, default=256, help="slice height and width in pixels (default 256)"
    )
    parser.add_argument("--in-channels", type=int, choices=(1, 3), default=3, help="input channels, 1 or 3 (default 3)")
    parser.add_argument("--out-channels", type=int, default=1, help="output channels (default 1)")
    parser.add_argument(
        "--width", type=int, default=None, help="base width for every model (default: each model's own)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--bundles", action="store_true",
                        help="list the trained model bundles shipped with brainseg instead (what `predict` "
                             "uses without -c)")


def describe_models(
    size: int = 256, in_channels: int = 3, out_channels: int = 1, width: int | None = None
) -> list[dict[str, Any]]:
    """One record per registered model: name, params, flops, size_divisor, widths, options, paper."""
    import torch

    from brainseg.models import count_flops, count_parameters, create_model, list_models, model_arguments
    from brainseg.models.registry import get_model_class

    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, in_channels=in_channels, out_channels=out_channels, width=width)
            model.check_input_size(size, size)
            flops = count_flops(model, size, in_channels)
        cls = get_model_class(name)
        options = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in model_arguments(name).items()
            if k not in ("in_channels", "out_channels", "width")
        }
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "flops": flops,
                "size": size,
                "in_channels": in_channels,
                "size_divisor": model.size_divisor,
                "width": model.config["width"],
                "default_width": cls.default_width,
                "options": options,
                "paper": cls.paper,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `describe_models` records."""
    if not rows:
        return "no models registered"
    size, chans = rows[0]["size"], rows[0]["in_channels"]
    header = ["model", "params", f"GFLOPs@{size}x{size}x{chans}", "size divisor", "width (default)", "paper"]
    body = [
        [
            r["name"],
            f"{r['params']:,}",
            f"{r['flops'] / 1e9:.2f}",
            str(r["size_divisor"]),
            f"{r['width']} ({r['default_width']})",
            r["paper"],
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    right = {1, 2, 3}

    def fmt(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from brainseg.errors import BrainsegError

    if args.bundles:
        from brainseg.bundles import DEFAULT_BUNDLE, describe, list_bundles

        bundles = list_bundles()
        if args.json:
            print(json.dumps(bundles, indent=2))
        elif not bundles:
            print("no bundled models in this installation")
        else:
            for meta in bundles:
                mark = " (default)" if meta.get("name") == DEFAULT_BUNDLE else ""
                print(f"{describe(meta)}{mark}\n  {meta['path']}")
        return 0
    if args.size < 1:
        raise BrainsegError(f"--size must be a positive number of pixels, got {args.size}")
    rows = describe_models(args.size, args.in_channels, args.out_channels, args.width)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0
