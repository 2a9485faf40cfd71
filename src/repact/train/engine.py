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
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_write_text, checkpoint_paths, load_checkpoint, save_checkpoint
from ..reparam import nonfinite_tensors
from .config import RESUME_MAY_CHANGE, ConfigError, TrainConfig, resolve_config, validate_config
from .dist import DistEnv, all_gather_objects, all_reduce_sum, barrier, convert_sync_batchnorm, setup_distributed
from .anneal import Annealer
from .logs import RunLogger, activation_snapshot
from .objective import Objective, objective_for
from .optim import build_optimizer, build_scheduler
from .pictures import TracedGradProbe, log_tensorboard_pictures, write_run_pictures
from .setup import build_data, build_model_for, make_loaders, pick_device
from .run_dir import RunFolder, RunFolderBusy, same_folder
from .state import (capture_rng, check_data_classes, check_train_state, locate_resume, resolve_resume, restore_rng,
                    seed_all)

__all__ = ["train", "RunResult", "TrainingDiverged", "RunWriteError", "config_for_resume"]


class TrainingDiverged(ValueError):
    """The loss, the weights or the validation loss became NaN or infinite; the last good
    checkpoint (every weight finite) is kept."""


class RunWriteError(OSError):
    """Writing the run's files failed (disk full, quota, I/O error); the last good checkpoint is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None


def config_for_resume(resume: str | Path, overrides: dict[str, Any] | None = None, out: str | None = None
                      ) -> TrainConfig:
    """The saved config of the run to resume, with ``overrides`` applied (only keys in
    ``RESUME_MAY_CHANGE`` may differ; others raise :class:`ConfigError`). Its ``out`` is the folder
    named by ``out`` (or ``overrides["out"]``), else the folder the checkpoint is in, wherever the
    run was first trained."""
    ckpt, ckpt_dir = resolve_resume(resume, out)
    saved = dict(ckpt.state["config"])
    overrides = dict(overrides or {})
    for k, v in overrides.items():
        if k in saved and k not in RESUME_MAY_CHANGE and saved[k] != v and k != "recipe":
            raise ConfigError(f"cannot change {k!r} when resuming ({saved[k]!r} in {ckpt.path}, {v!r} asked); "
                              f"a resumed run may change only {', '.join(sorted(RESUME_MAY_CHANGE))}")
    saved.pop("recipe", None)
    try:
        resolve_config(saved)
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt.path} records a training config that is not valid here: {exc}") from None
    saved.update(overrides)
    saved.pop("recipe", None)
    saved["out"] = str(out or overrides.get("out") or ckpt_dir)
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

    The run folder is ``cfg.out`` (default ``runs/<name>``; when resuming, the folder of the
    checkpoint). It is locked for this process (:class:`~repact.train.run_dir.RunFolderBusy` if
    another one holds it). A new run goes only into a missing or empty folder, or one whose run
    never finished an epoch; ``overwrite=True`` replaces a run, which stays intact until the new
    run's first checkpoint. Resuming into another folder copies the run there first (refused for
    a folder that holds a run unless ``overwrite``).

    Raises :class:`ConfigError` / ``DataError`` / ``CheckpointError`` (all ``ValueError``) for bad
    input before anything is written, :class:`TrainingDiverged` when the loss, weights or
    validation loss stop being finite, and :class:`RunWriteError` when the run's files cannot be
    written.
    """
    validate_config(cfg)
    env = setup_distributed("cuda" if (cfg.device.startswith("cuda") or (cfg.device == "auto" and
                                                                          torch.cuda.is_available())) else "cpu")
    try:
        folder, ckpt, note = _open_folder(cfg, resume, overwrite, env)
        try:
            cfg = dataclasses.replace(cfg, out=str(folder.target))
            if note:
                _say(f"note: {note}", cfg, env)
            return _run(cfg, env, folder, ckpt, keep_model)
        finally:
            folder.close()
    finally:
        env.shutdown()


def _open_folder(cfg: TrainConfig, resume, overwrite: bool, env: DistEnv):
    """(locked RunFolder, checkpoint to resume or None, note). Rank 0 locks and prepares the
    folder; the other ranks learn of its error, or read the checkpoint once it is in place."""
    error, result = None, None
    if env.is_main:
        try:
            result = _prepare_folder(cfg, resume, overwrite)
        except (ValueError, RunFolderBusy, OSError) as exc:
            error = exc
    errors = all_gather_objects(None if error is None else (isinstance(error, RunFolderBusy), str(error)), env)
    if error is not None:
        raise error
    if errors[0] is not None:
        busy, msg = errors[0]
        raise (RunFolderBusy if busy else ConfigError)(msg)
    if result is not None:
        return result
    target = Path(cfg.out) if cfg.out else None
    ckpt = None
    if resume is not None:
        ckpt, ckpt_dir = resolve_resume(resume, cfg.out)
        target = target or ckpt_dir
    return RunFolder(target or Path("runs") / cfg.run_name()), ckpt, None


def _prepare_folder(cfg: TrainConfig, resume, overwrite: bool):
    if resume is None:
        folder = RunFolder(Path(cfg.out) if cfg.out else Path("runs") / cfg.run_name()).lock()
        try:
            return folder, None, folder.start_fresh(overwrite)
        except BaseException:
            folder.close()
            raise
    stem = locate_resume(resume, cfg.out)
    source = checkpoint_paths(stem)[0].parent
    target = Path(cfg.out) if cfg.out else source
    folder = RunFolder(target)
    in_place = same_folder(target, source)
    if in_place and overwrite:
        raise ConfigError(f"--resume continues the run in {target} and --overwrite would replace it; give one of "
                          "them (or --out another folder to continue a copy of the run there)")
    try:
        folder.lock()
        ckpt = load_checkpoint(stem)
        check_train_state(ckpt)
        _check_resume_config(cfg, ckpt.state["config"], ckpt.path)
        if not in_place:  # copy the run, then continue the copy (re-read: the source was unlocked above)
            folder.start_copy(source, stem, overwrite)
            ckpt = load_checkpoint(folder.target / "last")
            check_train_state(ckpt)
        return folder, ckpt, None
    except BaseException:
        folder.close()
        raise


def _kept(folder: RunFolder) -> str:
    """What the user still has after a run stops early."""
    if folder.pending:
        return f"{folder.target} keeps the run it held before ({folder.replaces}), untouched"
    last = checkpoint_paths(folder.target / "last")[0]
    if last.exists():
        return f"The last good checkpoint stays at {last}"
    return "No epoch had finished, so there is no checkpoint (and nothing is lost)"


def _diverged_advice(folder: RunFolder) -> str:
    if checkpoint_paths(folder.target / "last")[0].exists() or folder.pending:
        return ("Train again with a lower --lr, --grad-clip or --warmup-epochs (into another --out, or with "
                "--overwrite to replace this run)")
    return f"Train into {folder.target} again with a lower --lr, --grad-clip or --warmup-epochs"


def _run(cfg: TrainConfig, env: DistEnv, folder: RunFolder, ckpt, keep_model: bool) -> RunResult:
    barrier(env)  # every rank has checked the run folder before rank 0 writes into it
    run_dir = folder.target
    device = pick_device(cfg, env)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    seed_all(cfg.seed)
    objective = objective_for(cfg)
    train_set, val_set, info = build_data(cfg)
    if ckpt is not None:
        check_data_classes(ckpt, info.classes, f"{info.name} in {cfg.data_dir}" if cfg.data_dir else info.name)
    model, model_config = build_model_for(cfg, info, device, saved=ckpt.model_config if ckpt is not None else None)
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

    train_loader, sampler, gen, val_loader = make_loaders(cfg, train_set, val_set, env, device, objective.collate_fn)
    steps = len(train_loader) if cfg.limit_batches is None else min(len(train_loader), cfg.limit_batches)
    if steps == 0:
        raise ConfigError(f"the train split of {info.name} has no batch of {cfg.batch_size} per process; "
                          "lower --batch-size")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp else None
    n_params = sum(p.numel() for p in model.parameters())
    annealer = Annealer.from_config(cfg, model)

    start, best_score, best_epoch, history = 0, -1.0, 0, []
    logger = RunLogger(folder.path, enabled=env.is_main)
    if ckpt is not None:
        st = ckpt.state
        try:
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            if scaler is not None and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt.path}: its optimizer or scheduler state does not fit this run "
                                  f"({type(exc).__name__}: {exc})") from None
        start, best_score, best_epoch = int(st["epoch"]), float(st.get("best_score", st.get("best_acc1"))), \
            int(st["best_epoch"])
        history = list(st["history"])
    if env.is_main:
        import yaml

        atomic_write_text(folder.path / "config.yaml", yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        logger.truncate_after(start)  # a new run keeps no earlier records; a resumed one none past its checkpoint
        if ckpt is None:
            logger.log_init_acts(activation_snapshot(model))
    if cfg.tensorboard and not logger.open_tensorboard(start):
        _say("--tensorboard: tensorboard is not installed, so this run writes no TensorBoard logs "
             "(pip install 'repact[tensorboard]')", cfg, env)
    probe = TracedGradProbe(model, folder.path, steps, start, enabled=env.is_main)

    net = model
    if env.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if ckpt is not None:  # last: everything above may have drawn random numbers
        rngs = ckpt.state["rng"]
        try:
            if isinstance(rngs, list):
                if len(rngs) != env.world and env.is_main:
                    _say(f"note: resuming a {len(rngs)}-process run on {env.world}; data order stays exact, "
                         "augmentation randomness does not", cfg, env)
                restore_rng(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
            else:
                restore_rng(rngs)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"{ckpt.path}: its random-number states cannot be restored "
                                  f"({type(exc).__name__}: {exc})") from None

    if env.is_main:
        what = f"resuming {run_dir} at epoch {start + 1}" if ckpt is not None else f"training into {run_dir}"
        if ckpt is not None and start >= cfg.epochs:
            what = f"{run_dir} has finished its {cfg.epochs} epochs (give a larger --epochs to train longer)"
        _say(f"{what}: {cfg.model} act={cfg.act} on {info.name} ({info.train_size} train / {info.val_size} val, "
             f"{info.img_size}px), {n_params:,} params, {env.world} process(es) on {device}", cfg, env)

    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cfg.amp else nullcontext
    for epoch in range(start, cfg.epochs):
        sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + env.rank)
        probe.reset()
        t0 = time.perf_counter()
        tr = _train_epoch(net, model, train_loader, steps, opt, sched, scaler, objective, autocast, probe, cfg, env,
                          device, epoch, folder, annealer=annealer)
        if annealer is not None:  # validation and the checkpoint see lam at the end of the epoch
            annealer.set(epoch + 1)
        train_time = time.perf_counter() - t0
        _share_buffers(model, env)
        val = objective.evaluate(model if not env.enabled else net.module, val_loader, device, env, cfg.amp,
                                 cfg.limit_val_batches or cfg.limit_batches)
        _check_epoch_finite(model, tr, val, env, epoch, folder, device)
        record = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **tr, **objective.val_record(val),
                  "epoch_time_s": time.perf_counter() - t0,
                  "train_images_per_s": tr["train_images"] / max(train_time, 1e-9), **probe.epoch_means()}
        if annealer is not None:
            record["anneal_lam"] = annealer.mean()
        history.append(record)
        improved = objective.score(val) > best_score
        if improved:
            best_score, best_epoch = objective.score(val), epoch + 1
        rngs = all_gather_objects(capture_rng(), env)
        if env.is_main:
            state = {"epoch": epoch + 1, "best_score": best_score, "best_metric": objective.primary,
                     "best_epoch": best_epoch, "history": history,
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs,
                     "world_size": env.world, "sampler": {"seed": cfg.seed, "next_epoch": epoch + 1},
                     "config": cfg.as_dict(), "data": info.as_dict(), "grad_probe": probe.names()}
            try:
                logger.log_epoch(record, activation_snapshot(model))
                log_tensorboard_pictures(logger, model, epoch + 1)
                if improved:
                    save_checkpoint(folder.path / "best", model, model_config=model_config, state=state)
                save_checkpoint(folder.path / "last", model, model_config=model_config, state=state)
                _write_summary(folder.path, run_dir, cfg, objective, history, best_epoch, n_params,
                               complete=epoch + 1 >= cfg.epochs)
            except OSError as exc:
                where = exc.filename or folder.path
                then = ("" if folder.pending or not checkpoint_paths(run_dir / "last")[0].exists()
                        else f"; once it can be written, continue with --resume {run_dir}")
                raise RunWriteError(exc.errno, f"cannot write {where}: {exc.strerror or exc}; stopping in epoch "
                                    f"{epoch + 1}. {_kept(folder)}{then}") from exc
            if folder.pending:  # the replacing run has its first checkpoint: swap it in
                folder.commit()
                logger.relocate(folder.path)
                probe.relocate(folder.path)
            _say(f"epoch {epoch + 1}/{cfg.epochs}  loss {tr['train_loss']:.4f}  {objective.describe(tr, val)}  "
                 f"best {best_score:.2f}% @{best_epoch}  {record['train_images_per_s']:.0f} img/s", cfg, env)
        barrier(env)
    if start >= cfg.epochs and env.is_main:
        _write_summary(folder.path, run_dir, cfg, objective, history, best_epoch, n_params, complete=True)
    if env.is_main:
        write_run_pictures(folder.path, model, lambda m: _say(m, cfg, env))
    logger.close()
    summary = json.loads((folder.path / "summary.json").read_text()) if env.is_main else {}
    return RunResult(run_dir, summary, history, model if keep_model else None)


def _train_epoch(net, model, loader, steps, opt, sched, scaler, objective: Objective, autocast, probe, cfg, env, device,
                 epoch, folder, annealer=None) -> dict[str, float]:
    """One epoch; returns ``train_loss``, ``train_<part>`` (the objective's logged parts, e.g.
    ``train_acc1`` or the detector's loss terms; means over images) and ``train_images``."""
    from tqdm import tqdm

    net.train()
    sums: dict[str, torch.Tensor] = {}  # loss and parts, each times the batch size
    count = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               # None: tqdm shows the bar on a terminal only, so logs get the per-epoch lines alone
               disable=True if (cfg.quiet or not env.is_main) else None, file=sys.stderr)
    t0 = time.perf_counter()
    check_every = 1 if device.type == "cpu" else 10
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        if annealer is not None:
            annealer.set(epoch + i / steps)
        with autocast():
            loss, parts, n = objective.train_step(net, batch, device)
        if i % check_every == 0 or i == steps - 1:
            _check_finite(loss, env, epoch, i, opt, folder)
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
            for key, v in (("loss", loss.detach()), *parts.items()):
                v = torch.as_tensor(v, dtype=torch.float64, device=device) * n
                sums[key] = sums[key] + v if key in sums else v
            count += n
        if not bar.disable:
            bar.update(1)
            if i % 5 == 0 or i == steps - 1:
                shown = {k: f"{float(v) / count:.3f}" if k == "loss" else f"{float(v) / count:.1f}"
                         for k, v in sums.items() if k in ("loss", objective.primary)}
                bar.set_postfix(**shown, img_s=f"{count * env.world / (time.perf_counter() - t0):.0f}")
    bar.close()
    keys = list(sums)
    totals = torch.stack([*(sums[k] for k in keys), torch.tensor(float(count), dtype=torch.float64, device=device)])
    all_reduce_sum(totals, env)
    *values, n = totals.tolist()
    means = {f"train_{k}": v / max(n, 1) for k, v in zip(keys, values)}
    return {**means, "train_images": int(n)}


def _share_buffers(model: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) before validation: DDP broadcasts them
    at the start of each training forward, so after the last one every rank holds its own batch's
    update, and the ranks would validate (and rank 0 save) different models."""
    if env.enabled:
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, 0)


def _check_finite(loss: torch.Tensor, env: DistEnv, epoch: int, step: int, opt, folder: RunFolder) -> None:
    bad = (~torch.isfinite(loss.detach())).to(torch.float64).reshape(1)
    all_reduce_sum(bad, env)
    if bad.item() > 0:
        raise TrainingDiverged(
            f"the training loss became non-finite ({float(loss.detach())}: NaN or Inf) at epoch {epoch + 1}, "
            f"step {step + 1} "
            f"(lr {opt.param_groups[0]['lr']:.3g}); stopping. {_kept(folder)}. {_diverged_advice(folder)}")


def _check_epoch_finite(model: nn.Module, tr: dict[str, float], val: dict[str, float], env: DistEnv, epoch: int,
                        folder: RunFolder, device: torch.device) -> None:
    """After an epoch: every weight and buffer, the mean training loss and the validation loss must
    be finite, or the epoch is not saved (its checkpoint would not be a good one)."""
    bad = [name for _, name, _, _ in nonfinite_tensors(model.state_dict())]
    losses = [f"{k} {v}" for k, v in (("train loss", tr["train_loss"]), ("val loss", val.get("loss")))
              if v is not None and not math.isfinite(v)]
    flag = torch.tensor([float(len(bad) + len(losses))], dtype=torch.float64, device=device)
    if all_reduce_sum(flag, env).item() == 0:
        return
    what = []
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        what.append(f"{len(bad)} weight/buffer tensor(s) hold NaN or Inf ({shown})")
    what += losses
    raise TrainingDiverged(f"epoch {epoch + 1} ended with non-finite values: {'; '.join(what)}; it is not saved, "
                           f"stopping. {_kept(folder)}. {_diverged_advice(folder)}")


def _write_summary(where: Path, run_dir: Path, cfg: TrainConfig, objective: Objective, history: list[dict],
                   best_epoch: int, n_params: int, complete: bool) -> None:
    """Write ``summary.json`` into ``where`` (the folder being written) describing the run at ``run_dir``."""
    if not history:
        return
    last = history[-1]
    best = history[best_epoch - 1] if 0 < best_epoch <= len(history) else last
    speeds = [h["train_images_per_s"] for h in history if "train_images_per_s" in h]
    summary = {
        "complete": complete, "epochs_done": len(history), "epochs": cfg.epochs,
        "task": cfg.task, "primary_metric": objective.primary, "best_epoch": best["epoch"],
        **objective.summary(best, last),
        "params": n_params, "train_images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "train_time_s": sum(h.get("epoch_time_s", 0.0) for h in history),
        "model": cfg.model, "act": cfg.act, "dataset": cfg.dataset, "seed": cfg.seed,
        "run_dir": str(run_dir),
        "checkpoints": {"last": str(checkpoint_paths(run_dir / "last")[0]),
                        "best": str(checkpoint_paths(run_dir / "best")[0])},
    }
    atomic_write_text(where / "summary.json", json.dumps(summary, indent=2) + "\n")
