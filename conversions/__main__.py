"""Command line: ``coreml-parity {inspect,predict,export,publish,audit} ...`` (also ``python -m conversions``).

    coreml-parity inspect MODEL.mlpackage
    coreml-parity predict MODEL.mlpackage --input NAME=FILE.npy [...] --output out.npz \
        [--precision fp16|fp32] [--backend auto|mil|coreml] [--compute-units CPU_ONLY|CPU_AND_NE|ALL]
    coreml-parity export FAMILY [--components ...] [--precision fp16|fp32] [--strategy NAME|--recipe FILE] --out DIR
    coreml-parity publish DIR --repo ORG/NAME [--revision BRANCH] [--create-pr] [--dry-run]
    coreml-parity audit PACKAGE|FAMILY/COMPONENT [--input NAME=FILE.npy ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _inspect(args) -> int:
    from .inspect_model import summarize
    from .runtime import load_model

    summary = summarize(load_model(args.model, backend="mil"))
    if args.json:
        print(json.dumps(summary.__dict__, indent=2))
    else:
        print("\n".join(summary.lines()))
    return 0


def _parse_inputs(pairs: list[str]) -> dict[str, np.ndarray]:
    feeds = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--input takes NAME=FILE.npy, got {pair!r}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--input {name}: cannot read {path!r} as a .npy array ({exc})") from None
    return feeds


def _check_output_path(path: str) -> None:
    """Fail before any work if the outputs could not be written to ``path``."""
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise ValueError(f"--output {path}: directory {out_dir!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--output {path}: is a directory; give a file name (.npz)")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ValueError(f"--output {path}: directory {out_dir!r} is not writable")


def _predict(args) -> int:
    from .files import atomic_path
    from .runtime import load_model

    _check_output_path(args.output)
    feeds = _parse_inputs(args.input)
    kwargs = {"compute_units": args.compute_units}
    if args.backend != "coreml":
        kwargs["precision"] = args.precision
    model = load_model(args.model, backend=args.backend, **kwargs)
    outputs = model.predict(feeds)
    # Never a half-written file under the requested name. A file object, not a path: np.savez would append
    # ".npz" to a temporary name without that suffix.
    with atomic_path(args.output) as tmp, open(tmp, "wb") as f:
        np.savez(f, **outputs)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype} {list(arr.shape)}")
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="coreml-parity",
                                     description="Inspect and run Core ML models (portable MIL runtime or Core ML); "
                                                 "export validated packages with their evidence, publish them, and "
                                                 "find the ops an fp16 program needs in fp32.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print I/O, deployment target, precision, op histogram, weights, compression")
    p.add_argument("model", help="path to a .mlpackage (or .mlmodel)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("predict", help="run one prediction on .npy inputs and save the outputs as .npz")
    p.add_argument("model", help="path to a .mlpackage (or .mlmodel)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="one per model input")
    p.add_argument("--output", required=True, help="where to write the outputs (.npz)")
    p.add_argument("--backend", default="auto", choices=["auto", "mil", "coreml"])
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"],
                   help="portable runtime only: fp16 honours the program's types, fp32 runs it all in fp32")
    p.add_argument("--compute-units", default="CPU_ONLY", choices=["CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU", "ALL"],
                   help="Core ML backend only")
    p.set_defaults(func=_predict)
    for name in ("release", "publish", "audit"):  # export, publish, audit: each module adds its subcommand
        module = importlib.import_module(f".{name}", __package__)
        module.add_parser(sub).set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .runtime import BackendUnavailableError, ModelPackageError

    try:
        return args.func(args)
    except (ModelPackageError, BackendUnavailableError, ValueError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
