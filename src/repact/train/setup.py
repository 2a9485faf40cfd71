"""Building a run's pieces from its config: device, datasets and loaders, model and its config record."""

from __future__ import annotations

import inspect
import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .._modes import eval_mode
from ..data import balanced_subset, build_datasets, dataset_channels
from ..data.transforms import reseed_augmentation
from ..models import create_model, get_model_spec
from ..models.checks import FETCHING, ModelTooLarge
from ..models.checks import check_model_fits as fits
from .config import CLASSIFICATION, ConfigError, TrainConfig
from .dist import DistEnv, ShardSampler
from .task_setup import build_task_data, build_task_model

__all__ = ["pick_device", "model_act", "build_data", "build_model_for", "check_model_fits", "prime_lazy",
           "set_bn_momentum", "make_loaders", "seed_worker", "TrainSampler"]


def pick_device(cfg: TrainConfig, env: DistEnv) -> torch.device:
    """The run's device: ``auto`` is CUDA when available (one GPU per DDP rank), else CPU."""
    want = cfg.device
    has_cuda = torch.cuda.is_available()
    if want == "auto":
        want = "cuda" if has_cuda else "cpu"
    if want.startswith("cuda") and not has_cuda:
        raise ConfigError(f"device {cfg.device!r} was asked for but torch sees no CUDA device here; use --device cpu")
    if cfg.amp and not want.startswith("cuda"):
        raise ConfigError("--amp runs on CUDA only and this run is on the CPU; drop --amp")
    if want == "cuda" and env.enabled:
        return torch.device("cuda", env.local_rank)
    return torch.device(want)


def model_act(cfg: TrainConfig) -> Any:
    """The ``act`` argument for ``create_model`` (None keeps the architecture's own activations)."""
    return None if cfg.act in (None, "", "default") else cfg.act


def _builder_params(name: str) -> set[str]:
    return set(inspect.signature(get_model_spec(name).builder).parameters)


def build_data(cfg: TrainConfig):
    """(train set, val set, DataInfo), gray images repeated to 3 channels for models without ``in_channels``."""
    if cfg.task != CLASSIFICATION:
        return build_task_data(cfg)
    params = _builder_params(cfg.model)
    takes_channels = "in_channels" in params or "in_channels" in cfg.model_kwargs
    channels = None if takes_channels else 3
    if not takes_channels and dataset_channels(cfg.dataset) == 3:
        channels = None
    return build_datasets(cfg.dataset, cfg.data_dir, img_size=cfg.img_size, augment=cfg.augment,
                          download=cfg.download, channels=channels, cache=cfg.cache,
                          skip_bad_images=cfg.skip_bad_images, train_subset=cfg.train_subset)


def build_model_for(cfg: TrainConfig, info, device: torch.device | None = None, saved: dict[str, Any] | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(model, model_config) where model_config rebuilds it with ``repact.checkpoint.build_model``.

    Bad builder arguments, and a model too large for ``device``'s memory (counted on the meta
    device first), raise :class:`ConfigError` before its weights are allocated. Detection and
    segmentation models are built by their task (a resumed one from its checkpoint's model
    config ``saved``); they build no activation lazily, so need no priming forward. Builder
    keywords that fetch weights (``weights=``, ``pretrained=``) initialize a new run only: the model
    config leaves them out (a checkpoint's weights are its own), and a resumed run is built without them.
    """
    if cfg.task != CLASSIFICATION:
        return build_task_model(cfg, info, model_act(cfg), saved, device or torch.device("cpu"))
    params = _builder_params(cfg.model)
    kwargs = dict(cfg.model_kwargs)
    if "in_channels" in params and "in_channels" not in kwargs:
        kwargs["in_channels"] = info.in_channels
    if "small_input" in params and "small_input" not in kwargs and info.img_size <= 64:
        kwargs["small_input"] = True
    architecture = {k: v for k, v in kwargs.items() if k not in FETCHING}
    if saved is not None:
        kwargs = architecture
    act = model_act(cfg)
    try:
        check_model_fits(cfg.model, act, info.num_classes, kwargs, device or torch.device("cpu"))
        model = create_model(cfg.model, act=act, num_classes=info.num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model {cfg.model!r} cannot be built with {kwargs}: {exc}") from None
    input_shape = [info.in_channels, info.img_size, info.img_size]
    from .anneal import wrap_for_training

    anneal_record = wrap_for_training(model, cfg)
    prime_lazy(model, input_shape)
    if cfg.bn_momentum is not None:
        set_bn_momentum(model, cfg.bn_momentum)
    from ..analysis.preprocess import preprocess_record

    config = {"name": cfg.model, "act": act, "num_classes": info.num_classes, "kwargs": architecture,
              "input_shape": input_shape, "preprocess": preprocess_record(info, cfg.augment)}
    if anneal_record:
        config["anneal"] = anneal_record
    return model, config


#: bytes per parameter while training: the weight, its gradient and up to two optimizer slots (fp32)
TRAIN_BYTES_PER_PARAM = 16


def check_model_fits(name: str, act: Any, num_classes: int, kwargs: dict[str, Any], device: torch.device) -> None:
    """:class:`ConfigError` for a model whose weights, gradients and optimizer state alone exceed
    ``device``'s memory, counted on the meta device (nothing allocated); bad arguments raise here as
    they would in the real build."""
    try:
        fits(name, act, num_classes, kwargs, device, bytes_per_param=TRAIN_BYTES_PER_PARAM,
             purpose="training it needs about {gib} GiB for weights, gradients and optimizer state")
    except ModelTooLarge as exc:
        raise ConfigError(f"{exc}; choose smaller model arguments") from None


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm (RepAct-III's own included); returns how many."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = momentum
    return len(norms)


@torch.no_grad()
def prime_lazy(model: nn.Module, input_shape: list[int]) -> None:
    """One eval-mode forward on zeros so lazily built activations create their parameters."""
    from ..activations.base import Activation

    if not any(isinstance(m, Activation) and not m._built for m in model.modules()):
        return
    with eval_mode(model):
        model(torch.zeros([2, *input_shape]))


def seed_worker(worker_id: int) -> None:
    """Seed numpy and python in a loader worker from the seed torch gave it."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class TrainSampler(DistributedSampler):
    """The training order of ``DistributedSampler``; ``set_epoch`` also gives the dataset's augmentation
    (seed, epoch) (:func:`repact.data.transforms.reseed_augmentation`), so every image's random crop
    and flip follow (seed, epoch, its index) whichever loader worker or rank draws it. The loader's
    workers must start anew each epoch (not persistent) to see the new epoch."""

    def __init__(self, dataset, **kw) -> None:
        super().__init__(dataset, **kw)
        reseed_augmentation(self.dataset, self.seed, self.epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        reseed_augmentation(self.dataset, self.seed, epoch)


def make_loaders(cfg: TrainConfig, train_set, val_set, env: DistEnv, device: torch.device, collate_fn=None):
    """(train loader, its sampler, its generator, val loader). The train order and augmentation depend
    only on (seed, epoch), not on ``--workers``: call ``sampler.set_epoch(e)`` and reseed the generator
    each epoch. ``collate_fn``: the task's (detection batches are lists of images and targets)."""
    sampler = TrainSampler(train_set, num_replicas=env.world, rank=env.rank, shuffle=True, seed=cfg.seed,
                           drop_last=False)
    gen = torch.Generator()
    pin = device.type == "cuda"
    per_rank = len(sampler)
    drop_last = per_rank > cfg.batch_size  # no 1-sample last batch for BatchNorm
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              pin_memory=pin, drop_last=drop_last, generator=gen, worker_init_fn=seed_worker,
                              persistent_workers=False, collate_fn=collate_fn)  # False: see TrainSampler
    val_batch = cfg.eval_batch_size or 2 * cfg.batch_size
    if cfg.task == CLASSIFICATION:  # a fixed class-balanced subset, not the first batches (tasks: the first batches)
        val_limit = cfg.limit_val_batches or cfg.limit_batches
        val_set = balanced_subset(val_set, val_limit * val_batch * env.world if val_limit else None)
    val_loader = DataLoader(val_set, batch_size=val_batch,
                            sampler=ShardSampler(val_set, env.rank, env.world), num_workers=cfg.workers,
                            pin_memory=pin, worker_init_fn=seed_worker, collate_fn=collate_fn)
    return train_loader, sampler, gen, val_loader
