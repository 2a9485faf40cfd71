"""Training configuration: defaults < ``--recipe`` < YAML ``--config`` < command-line flags.

The resolved config is saved with every run (``config.yaml``) and inside its checkpoints.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..models.registry import MAX_IMAGE_SIDE

__all__ = ["TrainConfig", "ConfigError", "RECIPES", "OPTIMIZERS", "SCHEDULES", "resolve_config",
           "load_config_file", "read_yaml_mapping", "validate_config", "parse_bool", "RESUME_MAY_CHANGE"]

OPTIMIZERS = ("sgd", "adamw", "adam")
#: the largest input side accepted (a 3 x 4096 x 4096 float image is 192 MiB; the models' own bound)
MAX_IMG_SIZE = MAX_IMAGE_SIDE
#: the most data-loader worker processes accepted
MAX_WORKERS = 256
SCHEDULES = ("cosine", "linear", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")
CLASSIFICATION = "classification"
#: options that only the detection and segmentation tasks read, with their classification values
TASK_ONLY = {"classes": "voc", "year": None, "weights": None, "swap_heads": False, "data_kwargs": {}}


def img_size_problem(size: int | None) -> str | None:
    """Why an input side is refused (``"{size} is too large: ..."``), or None when it is accepted."""
    if size is None or 1 <= size <= MAX_IMG_SIZE:
        return None
    if size < 1:
        return f"{size} is not a size; accepted: 1 to {MAX_IMG_SIZE}"
    return (f"{size} is too large: one 3-channel image alone would take {3 * 4 * size ** 2 / 2**30:,.1f} GiB; "
            f"accepted: 1 to {MAX_IMG_SIZE}")


def _utf8(text: str) -> bool:
    """Whether ``text`` is UTF-8 (a path of bytes that are not UTF-8 holds surrogates on POSIX)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ConfigError(ValueError):
    """A configuration value is unknown, out of range, or impossible together with another."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (see ``docs/training.md``)."""

    task: str = CLASSIFICATION
    model: str = "small_cnn"
    act: str = "repact"
    model_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    swap_heads: bool = False
    dataset: str = "digits"
    data_dir: str | None = None
    classes: str = "voc"
    year: str | None = None
    data_kwargs: dict = field(default_factory=dict)
    download: bool = False
    img_size: int | None = None
    augment: str = "auto"
    train_subset: int | None = None  # a fixed class-balanced subset of this many training images
    cache: str = "auto"  # decoded-image cache of image folders: auto, on, off (repact.data.cache)
    skip_bad_images: bool = False
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.05
    min_lr: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    bn_momentum: float | None = None  # every BatchNorm's running-statistics momentum (None: the model's own)
    # annealing activations into the identity (repact.train.anneal)
    anneal_acts: str | None = None  # "START:END" epochs
    anneal_schedule: str = "linear"  # linear, cosine
    anneal_by: str = "model"  # model (one window), layer (one slice of it per layer, in order)
    anneal_include: str | None = None  # regex of the activation paths to wrap (models without built-in ones)
    amp: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    workers: int = 0
    limit_batches: int | None = None
    limit_val_batches: int | None = None
    sync_bn: bool = False
    out: str | None = None
    recipe: str | None = None
    quiet: bool = False
    tensorboard: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_name(self) -> str:
        act = str(self.act).replace("/", "_")
        return f"{self.dataset}-{self.model}-{act}-s{self.seed}"


#: presets applied before the YAML file and the flags
RECIPES: dict[str, dict[str, Any]] = {
    # RepAct's official train.py (papers digest 1.4), except that weight decay skips activation
    # parameters, biases and norms here (ACON's rule) while the official code decays everything
    "repact-paper": dict(epochs=150, batch_size=32, optimizer="sgd", momentum=0.9, lr=0.01, min_lr=1e-6,
                         schedule="cosine", weight_decay=4e-4, label_smoothing=0.1, augment="repact-paper",
                         img_size=224, seed=0),
}

#: keys a resumed run may change; every other key must match the checkpoint's config
RESUME_MAY_CHANGE = frozenset({"epochs", "workers", "quiet", "out", "device", "limit_val_batches", "eval_batch_size",
                               "data_dir", "download", "cache", "tensorboard"})

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _key(k: str) -> str:
    return str(k).strip().replace("-", "_")


def read_yaml_mapping(path: str | Path, what: str, holds: str) -> dict[Any, Any]:
    """The mapping in the YAML file ``path`` (a regular file or a pipe; empty: ``{}``); a
    :class:`ConfigError` naming ``what`` (``config file``) and the file for anything else: a missing
    path, a folder or device, text that is not UTF-8 or not YAML, a document that is no mapping.
    ``holds`` says what the file should hold (``a YAML file of training options``)."""
    import stat

    import yaml

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist (give {holds})") from None
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc.strerror} (give {holds})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device or socket, not a regular file"
        raise ConfigError(f"{what} {p} is {kind}; give {holds}")
    try:
        data = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte {exc.start}); give {holds}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must hold a mapping, not a {type(data).__name__} (give {holds})")
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of TrainConfig keys (hyphens or underscores)."""
    p = Path(path)
    data = read_yaml_mapping(p, "config file", "a YAML file of training options")
    out = {}
    for k, v in data.items():
        key = _key(k)
        if key not in _FIELDS:
            raise ConfigError(f"config file {p}: unknown option {k!r}; accepted: {', '.join(sorted(_FIELDS))}")
        out[key] = v
    return out


def resolve_config(file_values: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
                   ) -> TrainConfig:
    """Defaults, then the recipe named by the flags or the file, then the file, then the flags."""
    file_values = {_key(k): v for k, v in (file_values or {}).items()}
    overrides = {_key(k): v for k, v in (overrides or {}).items()}
    for k in (*file_values, *overrides):
        if k not in _FIELDS:
            raise ConfigError(f"unknown training option {k!r}; accepted: {', '.join(sorted(_FIELDS))}")
    values: dict[str, Any] = {}
    recipe = overrides.get("recipe", file_values.get("recipe"))
    if recipe not in (None, "", "none"):
        name = str(recipe).strip().lower().replace("_", "-")
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; accepted: {', '.join(RECIPES)}")
        values.update(RECIPES[name])
        values["recipe"] = name
    values.update({k: v for k, v in file_values.items() if k != "recipe"})
    values.update({k: v for k, v in overrides.items() if k != "recipe"})
    if recipe in ("", "none"):
        values["recipe"] = None
    _task_defaults(values)
    cfg = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate_config(cfg)
    return cfg


def _task_defaults(values: dict[str, Any]) -> None:
    """A detection or segmentation run without ``model`` / ``dataset`` gets the task's defaults."""
    task = str(values.get("task") or CLASSIFICATION).strip().lower()
    if task == CLASSIFICATION:
        return
    from ..tasks import TASKS

    if task in TASKS:
        values.setdefault("model", TASKS[task].default_model)
        values.setdefault("dataset", TASKS[task].default_dataset)


#: the words a boolean option accepts (YAML and flags), and what they mean
BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


def parse_bool(value: Any, what: str) -> bool:
    """``value`` as a bool: true/false, 1/0, yes/no, on/off (any case), else :class:`ConfigError`."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word not in BOOL_WORDS:
        raise ConfigError(f"{what} got {value!r}, which is not a boolean; accepted: true/false, 1/0, yes/no, on/off")
    return BOOL_WORDS[word]


def _coerce(key: str, value: Any) -> Any:
    """Convert YAML/flag values to the field's type, with a clear error. Booleans are not numbers
    here (``epochs: true`` is refused, though Python counts True as 1)."""
    if value is None:
        return None
    default = _FIELDS[key].default
    kind = type(default) if default is not dataclasses.MISSING and default is not None else None
    typ = str(_FIELDS[key].type)
    if kind is bool or typ == "bool":
        return parse_bool(value, f"option {key!r}")
    try:
        if kind in (int, float) or typ.startswith(("int", "float")):
            if isinstance(value, bool):
                raise ValueError(value)
            if kind is int or typ.startswith("int"):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return float(value)
        if typ.startswith("dict"):
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        why = " (true/false is not a number here)" if isinstance(value, bool) else ""
        raise ConfigError(f"option {key!r} got {value!r}, which is not a valid {typ}{why}") from None


def validate_config(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value and what is accepted."""
    from ..data import normalize_name
    from ..models import get_model_spec
    from ..registry import resolve_name

    def bad(msg: str) -> None:
        raise ConfigError(msg)

    task = _validate_task(cfg)
    try:
        if task is None:
            cfg.dataset = normalize_name(cfg.dataset)
        else:
            cfg.dataset = task.check_dataset(cfg.dataset)
            task.check_model(cfg.model)
        get_model_spec(cfg.model)
        if cfg.act not in (None, "", "default"):
            resolve_name(cfg.act)
    except ValueError as exc:
        bad(str(exc))
    if cfg.optimizer.lower() not in OPTIMIZERS:
        bad(f"unknown optimizer {cfg.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    cfg.optimizer = cfg.optimizer.lower()
    if cfg.schedule.lower() not in SCHEDULES:
        bad(f"unknown schedule {cfg.schedule!r}; accepted: {', '.join(SCHEDULES)}")
    cfg.schedule = cfg.schedule.lower()
    if cfg.device.split(":")[0] not in DEVICES:
        bad(f"unknown device {cfg.device!r}; accepted: auto, cpu, cuda, cuda:N")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            bad(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("eval_batch_size", "limit_batches", "limit_val_batches", "img_size", "step_size", "train_subset"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            bad(f"{name} must be a positive integer (or unset), got {v}")
    if img_size_problem(cfg.img_size):
        bad(f"img_size {img_size_problem(cfg.img_size)}")
    if cfg.out is not None and not _utf8(str(cfg.out)):
        bad(f"out {str(cfg.out).encode('utf-8', 'surrogateescape')!r} is not UTF-8 text: a run records its folder's "
            "name in config.yaml, its JSON files and its pictures; give a folder name that is UTF-8")
    if cfg.workers < 0 or cfg.workers > MAX_WORKERS:
        bad(f"workers must be from 0 to {MAX_WORKERS}, got {cfg.workers}")
    if not 0 <= cfg.seed < 2**63:
        bad(f"seed must be an integer from 0 to 2**63 - 1, got {cfg.seed}")
    if not all(isinstance(k, str) and k.isidentifier() for k in cfg.model_kwargs):
        bad(f"model_kwargs keys must be argument names, got {list(cfg.model_kwargs)}")
    if cfg.cache not in ("auto", "on", "off"):
        bad(f"unknown cache mode {cfg.cache!r}; accepted: auto, on, off")
    for name in ("lr", "min_lr", "weight_decay", "momentum", "warmup_epochs", "gamma"):
        v = getattr(cfg, name)
        if not math.isfinite(v) or v < 0:
            bad(f"{name} must be a finite number >= 0, got {v}")
    if cfg.lr <= 0:
        bad(f"lr must be > 0, got {cfg.lr}")
    if cfg.min_lr > cfg.lr:
        bad(f"min_lr ({cfg.min_lr}) must not exceed lr ({cfg.lr})")
    if not 0 <= cfg.label_smoothing < 1:
        bad(f"label_smoothing must lie in [0, 1), got {cfg.label_smoothing}")
    if cfg.warmup_epochs > cfg.epochs:
        bad(f"warmup_epochs ({cfg.warmup_epochs}) must not exceed epochs ({cfg.epochs})")
    if cfg.bn_momentum is not None and not 0 < cfg.bn_momentum <= 1:
        bad(f"bn_momentum must lie in (0, 1] (or unset for the model's own), got {cfg.bn_momentum}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        bad(f"grad_clip must be > 0 (or unset), got {cfg.grad_clip}")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum == 0):
        bad("nesterov needs --optimizer sgd with a momentum > 0")
    if cfg.amp and cfg.device == "cpu":
        bad("--amp runs on CUDA only; it cannot be combined with --device cpu")
    from .anneal import check_anneal_config

    check_anneal_config(cfg)
    from ..data import AUGMENTS

    augments = AUGMENTS if task is None else task.augments
    if str(cfg.augment).lower().replace("_", "-") not in augments:
        bad(f"unknown augmentation {cfg.augment!r}" + ("" if task is None else f" for task {task.name}")
            + f"; accepted: {', '.join(augments)}")
    cfg.augment = str(cfg.augment).lower().replace("_", "-")


def _validate_task(cfg: TrainConfig):
    """The run's :class:`repact.tasks.Task` (None for classification); refuses options of the other kind."""
    from ..data import DATASETS
    from ..models import get_model_spec
    from ..tasks import TASKS

    cfg.task = str(cfg.task).strip().lower()
    if cfg.task != CLASSIFICATION and cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; accepted: {CLASSIFICATION}, {', '.join(TASKS)}")
    if cfg.task == CLASSIFICATION:
        key = str(cfg.dataset).strip().lower().replace("-", "_")
        for name, t in TASKS.items():
            if key in t.datasets:
                raise ConfigError(f"dataset {cfg.dataset!r} is a {name} dataset; add --task {name} "
                                  f"(classification takes {', '.join(DATASETS)})")
        try:
            family = get_model_spec(cfg.model).family
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if family in TASKS:
            raise ConfigError(f"model {cfg.model!r} is a {family} model; add --task {family}")
        given = [k for k, v in TASK_ONLY.items() if getattr(cfg, k) != v]
        if given:
            raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in given)} appl"
                              f"{'ies' if len(given) == 1 else 'y'} to --task detection and segmentation only")
        return None
    if cfg.label_smoothing:
        raise ConfigError(f"label_smoothing applies to classification only (task {cfg.task} has its own loss)")
    if cfg.download:
        raise ConfigError(f"--download fetches classification datasets only; task {cfg.task} reads a VOC-format "
                          "folder from --data-dir")
    if not all(isinstance(k, str) and k.isidentifier() for k in cfg.data_kwargs):
        raise ConfigError(f"data_kwargs keys must be option names, got {list(cfg.data_kwargs)}")
    task = TASKS[cfg.task]()
    _coerce_data_flags(cfg, task)
    return task


def _coerce_data_flags(cfg: TrainConfig, task) -> None:
    """The task's boolean data options (``keep_difficult``) parsed strictly, as the boolean fields are."""
    params = inspect.signature(task.build_data).parameters
    for key, value in cfg.data_kwargs.items():
        if key in params and str(params[key].annotation) == "bool":
            cfg.data_kwargs[key] = parse_bool(value, f"--data-kw {key}")
