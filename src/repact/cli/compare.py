"""``repact compare``: a grid of act x model x dataset x seed runs, summarized with CIs and deltas."""

from __future__ import annotations

import sys

from .train import _kv, add_train_options, check_tensorboard, explicit_options

__all__ = ["add_parser", "run"]


def _list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="run an act x model x dataset x seed grid and summarize it",
        description="Train every combination (finished runs are skipped and interrupted ones resumed, so "
                    "re-running the same command continues a grid, however it ran before), in sequence, in --jobs "
                    "parallel processes, or as submitit jobs (SLURM); then write compare.md, compare.csv, runs.csv, "
                    "compare.png (means with 95% CI error bars) and compare_curves.png (learning curves, mean and "
                    "band over seeds) under --out. The grid comes from flags or a YAML --grid file (keys acts, "
                    "models, datasets, seeds, baseline, metric, train; see configs/studies/). With --task detection or "
                    "segmentation the runs are ranked by val mAP@0.5 or mIoU.")
    p.add_argument("--grid", default=None, help="YAML grid file (flags override its keys)")
    p.add_argument("--acts", default=None, help="comma-separated activations, e.g. hardswish,repact,acon_c_layer")
    p.add_argument("--models", default=None, help="comma-separated models (default small_cnn; the task's with --task)")
    p.add_argument("--datasets", default=None, help="comma-separated datasets (default digits; the task's with --task)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--baseline", default=None, help="activation the others are compared with (default: the first)")
    p.add_argument("--metric", default=None, choices=("last", "best"),
                   help="the primary val metric (top-1; mAP@0.5 for --task detection, mIoU for segmentation) of the "
                        "last epoch (default) or of the best epoch")
    p.add_argument("--out", default="runs/compare", help="output folder (default ./runs/compare)")
    x = p.add_argument_group("where the runs go")
    x.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process with the cores split "
                   "between them (default 1: in this process)")
    x.add_argument("--executor", default="local", choices=("local", "submitit"),
                   help="local (default; --jobs) or submitit: one job per run, on SLURM when sbatch is there, else "
                        "submitit's local executor (pip install 'repact[cluster]')")
    x.add_argument("--executor-kw", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="submitit parameter (repeatable), e.g. timeout_min=600 slurm_partition=gpu gpus_per_node=1 "
                        "cpus_per_task=8; cluster=local|slurm|debug picks the backend")
    add_train_options(p, grid=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.compare import Grid, load_grid_file, run_grid, write_reports
    from ..train.config import load_config_file
    from . import CLIError

    data = load_grid_file(args.grid) if args.grid else {}
    for key in ("acts", "models", "datasets", "seeds"):
        v = getattr(args, key)
        if v is not None:
            data[key] = _list(v)
    if args.baseline is not None:
        data["baseline"] = args.baseline
    if args.metric is not None:
        data["metric"] = args.metric
    if not data.get("acts"):
        raise CLIError("no activations to compare: give --acts a,b,... or a --grid file with 'acts'")
    try:
        data["seeds"] = [int(s) for s in data.get("seeds", [0, 1, 2])]
    except (TypeError, ValueError):
        raise CLIError(f"seeds must be integers, got {data.get('seeds')}") from None
    data.setdefault("baseline", data["acts"][0])
    train_values = dict(data.get("train") or {})
    if args.config:
        train_values.update(load_config_file(args.config))
    overrides = {k: v for k, v in explicit_options(args).items() if k not in ("out", "jobs", "executor", "executor_kw")}
    for k in ("model", "act", "dataset", "seed", "out"):
        if k in train_values:
            raise CLIError(f"the grid's train options may not set {k!r}; use the grid keys "
                           "(acts, models, datasets, seeds) and --out")
    task = str(overrides.get("task", train_values.get("task", "classification"))).strip().lower()
    models, datasets = ["small_cnn"], ["digits"]
    if task != "classification":
        from ..tasks import get_task

        t = get_task(task)
        models, datasets = [t.default_model], [t.default_dataset]
    grid = Grid(acts=[str(a) for a in data["acts"]], models=[str(m) for m in data.get("models", models)],
                datasets=[str(d) for d in data.get("datasets", datasets)], seeds=data["seeds"],
                baseline=data.get("baseline"), metric=data.get("metric", "last"), train=train_values, task=task)
    overrides.setdefault("quiet", True)
    check_tensorboard({**train_values, **overrides})
    if args.jobs < 1:
        raise CLIError(f"--jobs must be at least 1, got {args.jobs}")
    if args.executor_kw and args.executor != "submitit":
        raise CLIError("--executor-kw sets submitit parameters; add --executor submitit")
    records = run_grid(grid, args.out, overrides, say=lambda m: print(m, flush=True), jobs=args.jobs,
                       executor=args.executor, executor_options=dict(args.executor_kw))
    paths = write_reports(grid, records, args.out)
    print()
    print(paths["markdown"].read_text().split("\n", 2)[2])
    print("wrote: " + ", ".join(str(p) for p in paths.values()))
    failed = sum(r["status"] != "done" for r in records)
    if failed:
        print(f"repact compare: {failed} run(s) diverged; they are left out of the statistics", file=sys.stderr)
    return 0
