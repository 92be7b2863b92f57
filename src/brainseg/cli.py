"""The `brainseg` command line: parse arguments, then call one library function per command.

Each sub-command lives in its own module under `brainseg.commands`; this file only dispatches
and turns errors into one clear line and a non-zero exit: `BrainsegError` (bad input, bad
settings) → exit 2; an `OSError` (a folder that cannot be written or read, a full disk) → exit 1,
naming the path and the operating system's reason; a closed output pipe (`… | head`) → exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence

from brainseg import __version__
from brainseg.errors import BrainsegError

# (name, module, one-line help). Order is the order `brainseg --help` shows.
COMMANDS: list[tuple[str, str, str]] = [
    ("phantoms", "brainseg.commands.phantoms", "write a synthetic MRI phantom dataset in the kaggle_3m layout"),
    ("index", "brainseg.commands.index", "index a dataset folder (kaggle_3m layout) and summarise it"),
    ("split", "brainseg.commands.split", "write a patient-level splits.json (hold-out or k-fold)"),
    ("models", "brainseg.commands.models", "list the architectures with parameter counts and FLOPs"),
    ("train", "brainseg.commands.train", "train one model"),
    ("evaluate", "brainseg.commands.evaluate", "evaluate a trained run on a split"),
    ("compare", "brainseg.commands.compare", "train and evaluate several models under one protocol, then report"),
    ("report", "brainseg.commands.report", "rebuild a comparison report from its files (no model needed)"),
    ("robustness", "brainseg.commands.robustness", "evaluate trained runs under perturbations and strata"),
    ("predict", "brainseg.commands.predict", "segment new scans with one or more checkpoints"),
    ("export", "brainseg.commands.export", "export a checkpoint to ONNX (checked against PyTorch)"),
    ("bundle", "brainseg.commands.bundle", "turn a trained run into a shippable model bundle (weights + metadata)"),
    ("serve", "brainseg.commands.serve", "start the local web viewer: upload a scan, see the tumour (127.0.0.1)"),
]


def _available() -> list[tuple[str, str, str]]:
    out = []
    for name, module, help_ in COMMANDS:
        if importlib.util.find_spec(module) is not None:
            out.append((name, module, help_))
    return out


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(
        prog="brainseg",
        description="Train, compare and use deep-learning models that segment brain tumours in MRI.",
    )
    parser.add_argument("--version", action="version", version=f"brainseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, str] = {}
    for name, module, help_ in _available():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=getattr(mod, "DESCRIPTION", help_))
        mod.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (compare records it in protocol.json)
    if not args.command:
        parser.print_help()
        return 1
    mod = importlib.import_module(modules[args.command])
    try:
        with _distributed():
            return int(mod.run(args) or 0)
    except BrainsegError as exc:
        print(f"brainseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (e.g. `brainseg index --json | head`): stop quietly, and keep Python
        # from failing again when it flushes stdout at exit
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        print(f"brainseg {args.command}: error: output closed early (broken pipe)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"brainseg {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"brainseg {args.command}: interrupted", file=sys.stderr)
        return 130


def os_error_line(exc: OSError) -> str:
    """'PATH: reason' for an OSError (both paths for a rename), else its own text."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = str(exc.filename) + (f" → {exc.filename2}" if exc.filename2 else "")
    return f"{where}: {reason}"


@contextlib.contextmanager
def _distributed() -> Iterator[None]:
    """Under torchrun (WORLD_SIZE > 1): join the process group, print results from rank 0 only.

    The group lives until the process exits (a group cannot be re-created in the same process
    under torchrun, and a program may call `main` more than once). Outside torchrun this does
    nothing and imports nothing heavy.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import atexit

    from brainseg.training import distributed as dist_utils

    if not dist_utils.is_distributed():
        dist_utils.init_from_env()
        atexit.register(dist_utils.cleanup)
    if dist_utils.is_main():
        yield
    else:  # the other ranks would print the same results again
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield


if __name__ == "__main__":
    raise SystemExit(main())
