"""``repact demo``: the main job. Train HardSwish vs RepAct-I on digits, re-parameterize, verify, export, report."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="train HardSwish vs RepAct-I on digits, re-parameterize, verify, export ONNX (about a minute)",
        description="Train a small CNN on scikit-learn's 8x8 digits with HardSwish and with RepAct-I, fuse RepAct "
                    "into its single-branch form, check that the outputs agree, export it to ONNX (when onnxruntime "
                    "is installed) and print accuracy, parameters, latency and the largest error in one table.")
    p.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    p.add_argument("--epochs", type=int, default=12, help="epochs per model (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from ..train.demo import run_demo

    t0 = time.perf_counter()
    report = run_demo(args.out, epochs=args.epochs, seed=args.seed, quiet=args.quiet)
    print()
    print(f"digits validation split: {report['val_images']} images; {report['epochs']} epochs per model, seed "
          f"{report['seed']}")
    print(report["table"])
    v = report["verify"]
    print(f"\nverify (re-parameterized vs training form, val logits): max abs error {v['max_abs']:.2e}, "
          f"max rel error {v['max_rel']:.2e}; {report['top1_flips_after_reparameterize']} predictions changed")
    print("\nfiles written:")
    for k, path in report["files"].items():
        print(f"  {k:<18} {path}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    return 0
