"""The training loop: ``train(config) -> RunResult``.

A run folder holds ``config.yaml``, ``metrics.csv``/``metrics.jsonl``, ``act_params.jsonl``,
``last``/``best`` checkpoints and ``summary.json``. Checkpoints are written at the end of each
epoch with the optimizer, scheduler, AMP scaler, the RNG states of every rank and the epoch (the
sampler's order is a function of seed and epoch), so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_write_text, checkpoint_paths, save_checkpoint
from .config import RESUME_MAY_CHANGE, ConfigError, TrainConfig, resolve_config, validate_config
from .dist import DistEnv, all_gather_objects, all_reduce_sum, barrier, convert_sync_batchnorm, setup_distributed
from .evaluate import evaluate, topk_correct
from .logs import GradProbe, RunLogger, activation_snapshot
from .optim import build_optimizer, build_scheduler
from .setup import build_data, build_model_for, make_loaders, pick_device
from .state import capture_rng, is_run_dir, resolve_resume, restore_rng, seed_all

__all__ = ["train", "RunResult", "TrainingDiverged", "config_for_resume"]


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None


def config_for_resume(resume: str | Path, overrides: dict[str, Any] | None = None, out: str | None = None
                      ) -> TrainConfig:
    """The saved config of the run to resume, with ``overrides`` applied (only keys in
    ``RESUME_MAY_CHANGE`` may differ; others raise :class:`ConfigError`)."""
    ckpt, _ = resolve_resume(resume, out)
    saved = dict(ckpt.state["config"])
    overrides = dict(overrides or {})
    for k, v in overrides.items():
        if k in saved and k not in RESUME_MAY_CHANGE and saved[k] != v and k != "recipe":
            raise ConfigError(f"cannot change {k!r} when resuming ({saved[k]!r} in {ckpt.path}, {v!r} asked); "
                              f"a resumed run may change only {', '.join(sorted(RESUME_MAY_CHANGE))}")
    saved.update(overrides)
    saved.pop("recipe", None)
    cfg = resolve_config(saved)
    cfg.recipe = ckpt.state["config"].get("recipe")
    return cfg


def _check_resume_config(cfg: TrainConfig, saved: dict[str, Any], where: Path) -> None:
    for k, v in cfg.as_dict().items():
        if k in RESUME_MAY_CHANGE or k not in saved:
            continue
        if saved[k] != v:
            raise ConfigError(f"cannot resume {where} with {k}={v!r}: the run was started with {k}={saved[k]!r}; "
                              f"a resumed run may change only {', '.join(sorted(RESUME_MAY_CHANGE))}")


def _say(msg: str, cfg: TrainConfig, env: DistEnv) -> None:
    if env.is_main:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)


def train(cfg: TrainConfig, *, resume: str | Path | None = None, overwrite: bool = False,
          keep_model: bool = True) -> RunResult:
    """Train ``cfg`` (optionally resuming from a run folder or checkpoint); returns the run's summary.

    Raises :class:`ConfigError` / ``DataError`` / ``CheckpointError`` (all ``ValueError``) for bad
    input before anything is written, and :class:`TrainingDiverged` on a NaN/Inf loss.
    """
    validate_config(cfg)
    ckpt = None
    if resume is not None:
        ckpt, ckpt_dir = resolve_resume(resume, cfg.out)
        _check_resume_config(cfg, ckpt.state["config"], ckpt.path)
        run_dir = Path(cfg.out) if cfg.out else ckpt_dir
    else:
        run_dir = Path(cfg.out) if cfg.out else Path("runs") / cfg.run_name()
        if is_run_dir(run_dir) and not overwrite:
            raise ConfigError(f"run folder {run_dir} already holds a run; continue it with --resume {run_dir}, "
                              "or choose another --out")
    cfg = dataclasses.replace(cfg, out=str(run_dir))

    env = setup_distributed("cuda" if (cfg.device.startswith("cuda") or (cfg.device == "auto" and
                                                                          torch.cuda.is_available())) else "cpu")
    try:
        return _run(cfg, env, run_dir, ckpt, keep_model)
    finally:
        env.shutdown()


def _run(cfg: TrainConfig, env: DistEnv, run_dir: Path, ckpt, keep_model: bool) -> RunResult:
    barrier(env)  # every rank has checked the run folder before rank 0 writes into it
    device = pick_device(cfg, env)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    seed_all(cfg.seed)
    train_set, val_set, info = build_data(cfg)
    model, model_config = build_model_for(cfg, info)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt.model_state)
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt.path} does not match model {cfg.model!r} with act {cfg.act!r}: "
                                  + " ".join(str(exc).splitlines()[:3])) from None
    model.to(device)
    if env.enabled and cfg.sync_bn:
        model = convert_sync_batchnorm(model)
    seed_all(cfg.seed + env.rank)

    train_loader, sampler, gen, val_loader = make_loaders(cfg, train_set, val_set, env, device)
    steps = len(train_loader) if cfg.limit_batches is None else min(len(train_loader), cfg.limit_batches)
    if steps == 0:
        raise ConfigError(f"the train split of {info.name} has no batch of {cfg.batch_size} per process; "
                          "lower --batch-size")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp else None
    probe = GradProbe(model)
    n_params = sum(p.numel() for p in model.parameters())

    start, best_acc1, best_epoch, history = 0, -1.0, 0, []
    logger = RunLogger(run_dir, enabled=env.is_main)
    if ckpt is not None:
        st = ckpt.state
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        start, best_acc1, best_epoch = int(st["epoch"]), float(st["best_acc1"]), int(st["best_epoch"])
        history = list(st.get("history", []))
        logger.truncate_after(start)
    elif env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        logger.truncate_after(0)  # --overwrite: no records of an earlier run stay in the logs
        logger.log_init_acts(activation_snapshot(model))
    logger.open_tensorboard(start)

    net = model
    if env.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if ckpt is not None:  # last: everything above may have drawn random numbers
        rngs = ckpt.state["rng"]
        if isinstance(rngs, list):
            if len(rngs) != env.world and env.is_main:
                _say(f"note: resuming a {len(rngs)}-process run on {env.world}; data order stays exact, "
                     "augmentation randomness does not", cfg, env)
            restore_rng(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
        else:
            restore_rng(rngs)

    if env.is_main:
        what = f"resuming {run_dir} at epoch {start + 1}" if ckpt is not None else f"training into {run_dir}"
        _say(f"{what}: {cfg.model} act={cfg.act} on {info.name} ({info.train_size} train / {info.val_size} val, "
             f"{info.img_size}px), {n_params:,} params, {env.world} process(es) on {device}", cfg, env)

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cfg.amp else nullcontext
    for epoch in range(start, cfg.epochs):
        sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + env.rank)
        probe.reset()
        t0 = time.perf_counter()
        tr = _train_epoch(net, model, train_loader, steps, opt, sched, scaler, criterion, autocast, probe, cfg, env,
                          device, epoch, run_dir)
        train_time = time.perf_counter() - t0
        val = evaluate(model if not env.enabled else net.module, val_loader, device, env=env, amp=cfg.amp,
                       limit=cfg.limit_val_batches or cfg.limit_batches)
        record = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **tr, "val_loss": val["loss"],
                  "val_acc1": val["acc1"], "val_acc5": val["acc5"], "val_images": val["n"],
                  "epoch_time_s": time.perf_counter() - t0,
                  "train_images_per_s": tr["train_images"] / max(train_time, 1e-9), **probe.epoch_means()}
        history.append(record)
        improved = val["acc1"] > best_acc1
        if improved:
            best_acc1, best_epoch = val["acc1"], epoch + 1
        rngs = all_gather_objects(capture_rng(), env)
        if env.is_main:
            logger.log_epoch(record, activation_snapshot(model))
            state = {"epoch": epoch + 1, "best_acc1": best_acc1, "best_epoch": best_epoch, "history": history,
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs,
                     "world_size": env.world, "sampler": {"seed": cfg.seed, "next_epoch": epoch + 1},
                     "config": cfg.as_dict(), "data": info.as_dict(), "grad_probe": probe.names()}
            if improved:
                save_checkpoint(run_dir / "best", model, model_config=model_config, state=state)
            save_checkpoint(run_dir / "last", model, model_config=model_config, state=state)
            _write_summary(run_dir, cfg, history, best_epoch, n_params, complete=epoch + 1 >= cfg.epochs)
            _say(f"epoch {epoch + 1}/{cfg.epochs}  loss {tr['train_loss']:.4f}  train {tr['train_acc1']:.2f}%  "
                 f"val {val['acc1']:.2f}% (top-5 {val['acc5']:.2f}%)  best {best_acc1:.2f}% @{best_epoch}  "
                 f"{record['train_images_per_s']:.0f} img/s", cfg, env)
        barrier(env)
    if start >= cfg.epochs and env.is_main:
        _write_summary(run_dir, cfg, history, best_epoch, n_params, complete=True)
    logger.close()
    summary = json.loads((run_dir / "summary.json").read_text()) if env.is_main else {}
    return RunResult(run_dir, summary, history, model if keep_model else None)


def _train_epoch(net, model, loader, steps, opt, sched, scaler, criterion, autocast, probe, cfg, env, device, epoch,
                 run_dir) -> dict[str, float]:
    from tqdm import tqdm

    net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct, n
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               # None: tqdm shows the bar on a terminal only, so logs get the per-epoch lines alone
               disable=True if (cfg.quiet or not env.is_main) else None, file=sys.stderr)
    t0 = time.perf_counter()
    check_every = 1 if device.type == "cpu" else 10
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits = net(x)
            loss = criterion(logits.float(), y)
        if i % check_every == 0 or i == steps - 1:
            _check_finite(loss, env, epoch, i, opt, run_dir)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        probe.update()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        with torch.no_grad():
            n = y.shape[0]
            sums += torch.stack([loss.detach().double() * n, topk_correct(logits.detach(), y, (1,))[0].double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device)])
        if not bar.disable:
            bar.update(1)
            if i % 5 == 0 or i == steps - 1:
                s = sums.tolist()
                bar.set_postfix(loss=f"{s[0] / s[2]:.3f}", acc=f"{100 * s[1] / s[2]:.1f}",
                                img_s=f"{s[2] * env.world / (time.perf_counter() - t0):.0f}")
    bar.close()
    all_reduce_sum(sums, env)
    loss_sum, correct, n = sums.tolist()
    return {"train_loss": loss_sum / max(n, 1), "train_acc1": 100.0 * correct / max(n, 1), "train_images": int(n)}


def _check_finite(loss: torch.Tensor, env: DistEnv, epoch: int, step: int, opt, run_dir: Path) -> None:
    bad = (~torch.isfinite(loss.detach())).to(torch.float64).reshape(1)
    all_reduce_sum(bad, env)
    if bad.item() > 0:
        last = checkpoint_paths(run_dir / "last")[0]
        kept = (f"the last good checkpoint stays at {last}" if last.exists()
                else "no epoch had finished, so there is no checkpoint")
        raise TrainingDiverged(
            f"the training loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1} "
            f"(lr {opt.param_groups[0]['lr']:.3g}); stopping. {kept}. Lower --lr, add --grad-clip or --warmup-epochs, "
            "or resume from the checkpoint with other settings")


def _write_summary(run_dir: Path, cfg: TrainConfig, history: list[dict], best_epoch: int, n_params: int,
                   complete: bool) -> None:
    if not history:
        return
    last = history[-1]
    best = history[best_epoch - 1] if 0 < best_epoch <= len(history) else last
    speeds = [h["train_images_per_s"] for h in history if "train_images_per_s" in h]
    summary = {
        "complete": complete, "epochs_done": len(history), "epochs": cfg.epochs,
        "best_epoch": best["epoch"], "best_acc1": best["val_acc1"], "best_acc5": best["val_acc5"],
        "last_epoch": last["epoch"], "last_acc1": last["val_acc1"], "last_acc5": last["val_acc5"],
        "last_val_loss": last["val_loss"], "last_train_loss": last["train_loss"],
        "params": n_params, "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "train_time_s": sum(h.get("epoch_time_s", 0.0) for h in history),
        "model": cfg.model, "act": cfg.act, "dataset": cfg.dataset, "seed": cfg.seed,
        "run_dir": str(run_dir),
        "checkpoints": {"last": str(checkpoint_paths(run_dir / "last")[0]),
                        "best": str(checkpoint_paths(run_dir / "best")[0])},
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
