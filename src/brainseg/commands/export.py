"""`brainseg export`: write a checkpoint as an ONNX model, checked against PyTorch."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Export a checkpoint to ONNX. The model takes the preprocessed input 'image' (batch, C, S, S; "
    "size, channels and normalisation are stored in the ONNX metadata under brainseg.preprocessing) "
    "and returns 'logits' (batch, 1, S, S). The file is written only after ONNX Runtime's output "
    "matches PyTorch's on the same inputs. Needs the optional extra: pip install 'brainseg[export]'."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--checkpoint", "-c", required=True, metavar="CKPT",
                   help="checkpoint file or run folder (the checkpoint its eval.checkpoint names: best unless its config says last)")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (onnx)")
    p.add_argument("--exporter", default="auto", choices=("auto", "torchscript", "dynamo"),
                   help="torchscript: PyTorch's older exporter (deprecated, fast); dynamo: the torch.export-"
                        "based one (PyTorch >= 2.5, slower); auto (default): torchscript, else dynamo")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="check: largest |ONNX − PyTorch| logit difference allowed is ATOL + RTOL·max|logit|")
    p.add_argument("--rtol", type=float, default=1e-4, help="see --atol (default 1e-4)")


def run(args: argparse.Namespace) -> int:
    from brainseg.export import export_onnx

    r = export_onnx(args.checkpoint, args.out, exporter=args.exporter, opset=args.opset, atol=args.atol,
                    rtol=args.rtol)
    print(f"wrote {r['path']} ({r['model']}, {r['exporter']} exporter, opset {r['opset']}, {r['bytes'] / 1e6:.1f} MB): input "
          f"{r['input']['name']} {r['input']['shape']}, output {r['output']['name']}; ONNX Runtime matches "
          f"PyTorch within {r['max_abs_diff']:.2g} on batches of {' and '.join(map(str, r['batches_checked']))}")
    for failure in r["exporter_failures"]:
        print(f"  (tried first: {failure})")
    return 0
