"""One trainer for float training and quantization-aware training (PT2E), with resumable checkpoints.

    train("mobilevit_xxs", data="digits")                       # float model, from scratch
    qat("mobilevit_xxs", backend="executorch", data="digits")   # trains float first if no weights

QAT is graph mode: the float model is exported, ``prepare_qat_pt2e`` inserts the fake quantizers
of the quantizer the chosen backend's converter owns (so training simulates exactly what the
backend runs), the graph is fine-tuned, ``convert_pt2e`` produces the quantised reference and the
converter lowers that graph directly. No second copy of any model.

Determinism: batch order is a function of (seed, epoch), the RNG state is checkpointed, and a run
resumed from any checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import create_model, get_model_info
from ..base import Normalize, reparameterize_model
from ..data import ImageSet
from .bench import host_latency
from .compute import autocast, check_amp, grad_scaler, resolve_device, rng_state, set_rng_state
from .training_data import (
    Samples,
    Skipped,
    Split,
    TensorSamples,
    describe,
    eval_batches,
    first_images,
    load_split,
    spread_indices,
    stream,
)

CHECKPOINT = "checkpoint.pt"


class OtherRunError(ValueError):
    """``resume`` found a checkpoint written by a run with other settings (model, data, recipe)."""


class DivergedError(ValueError):
    """The loss or the gradients stopped being finite; the step was not taken, the last checkpoint is kept."""


@dataclass
class Recipe:
    """Training hyper-parameters. The defaults train compact transformers on ``digits`` untuned."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    # QAT: from this epoch on, BatchNorm statistics and quantisation observers are frozen.
    freeze_epoch: int | None = None
    seed: int = 0
    train_limit: int | None = None  # use only the first N training images (smoke tests)
    augment: str = "auto"  # training augmentation (training_data.load_split): auto, none, crop-flip
    amp: str = "none"  # mixed precision of the forward pass (compute.autocast): none, bf16, fp16
    # knowledge distillation, when a teacher is given: (1 - kd_alpha) * cross-entropy with the labels +
    # kd_alpha * T^2 * KL(teacher || student) on logits softened by T = kd_temperature
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    # soft: the KL term above; hard (DeiT): kd_alpha * cross-entropy with the teacher's arg-max, through the
    # distillation head (head_dist) where the model has one, else through the one head
    distillation: str = "soft"

    @classmethod
    def for_qat(cls, **kw: Any) -> Recipe:
        r = cls(epochs=3, lr=2e-4, warmup_epochs=0.0, weight_decay=0.0)
        r = replace(r, **{k: v for k, v in kw.items() if v is not None})
        if r.freeze_epoch is None and r.epochs > 1:
            r = replace(r, freeze_epoch=max(1, round(r.epochs * 0.6)))
        return r


# --------------------------------------------------------------------------------------------
# distributed (torchrun) support
# --------------------------------------------------------------------------------------------


def _dist(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun: NCCL for a CUDA device,
    gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _is_main() -> bool:
    return _dist()[0] == 0


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


@dataclass
class State:
    epoch: int = 0  # next epoch to run
    batch: int = 0  # next batch within that epoch
    frozen: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _lr_lambda(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, recipe.epochs * steps_per_epoch)
    warm = int(recipe.warmup_epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t))) * 0.99 + 0.01

    return f


def _batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    out = []
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        out.append(idx[rank::world])
    return [b for b in out if len(b)]


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name("." + path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def outputs(model: Callable[[torch.Tensor], torch.Tensor], ds: ImageSet | Samples, batch_size: int = 64,
            workers: int = 0, skipped: Skipped | None = None,
            device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s (N, classes) outputs on a labelled set, in batches, with the (N,) labels of the images it saw
    (a streamed set leaves unreadable files out, counted in ``skipped``). Batches go to ``device`` when given
    (a module on a GPU); a callable taking CPU tensors (an artifact) is fed as is."""
    if isinstance(ds, ImageSet):
        ds = TensorSamples(ds)
    logits, labels = [], []
    for x, y in stream(ds, eval_batches(len(ds), batch_size), workers, skipped):
        if len(y):
            out = head_average(model(x if device is None else x.to(device)))
            logits.append(out.float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out))
            labels.append(y.numpy())
    if not logits:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], ds: ImageSet | Samples, batch_size: int = 64,
                   workers: int = 0) -> np.ndarray:
    """``model``'s (N, classes) outputs on a set, in batches."""
    return outputs(model, ds, batch_size, workers)[0]


def correct(model: Callable[[torch.Tensor], torch.Tensor], ds: ImageSet | Samples, batch_size: int = 64,
            workers: int = 0, skipped: Skipped | None = None, device: torch.device | None = None) -> np.ndarray:
    """Per image of a labelled set: whether ``model``'s top-1 class is the label (bool array)."""
    logits, labels = outputs(model, ds, batch_size, workers, skipped, device)
    return logits.argmax(1) == labels if len(labels) else np.zeros(0, dtype=bool)


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], ds: ImageSet | Samples, batch_size: int = 64,
             workers: int = 0, skipped: Skipped | None = None, device: torch.device | None = None) -> float:
    """Top-1 accuracy (fraction) of ``model`` on a labelled set."""
    hits = correct(model, ds, batch_size, workers, skipped, device)
    return float(hits.mean()) if len(hits) else 0.0


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Top-1 of ``a`` minus top-1 of ``b`` on the same images, with its 95% interval.

    Only the images where the two disagree carry information: with ``gained`` images right only in
    ``a`` and ``lost`` right only in ``b`` out of n, the difference is (gained - lost) / n with
    variance ((gained + lost) / n - d^2) / n (paired proportions, normal approximation).
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = int(a.size)
    gained, lost = int(np.sum(a & ~b)), int(np.sum(~a & b))
    d = (gained - lost) / n if n else 0.0
    se = math.sqrt(max(0.0, (gained + lost) / n - d * d) / n) if n else 0.0
    return {"difference": d, "ci95": [d - 1.96 * se, d + 1.96 * se], "only_first": gained, "only_second": lost,
            "images": n}


def fit(
    module: nn.Module,
    split: Split,
    recipe: Recipe,
    out: Path,
    kind: str,
    meta: dict[str, Any],
    resume: bool,
    set_train: Callable[[nn.Module], None],
    set_eval: Callable[[nn.Module], None],
    freeze: Callable[[nn.Module], None] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    workers: int = 0,
    skipped: Skipped | None = None,
    device: torch.device | None = None,
    teacher: nn.Module | None = None,
) -> State:
    """Train ``module`` in place with AdamW, warm-up + cosine, label smoothing and gradient clipping.

    A checkpoint (module, optimizer, schedule, RNG, position, history) is written after every
    epoch and, at the next step boundary, on Ctrl-C or SIGTERM; with ``resume`` the run continues
    from ``out/checkpoint.pt`` and ends with the weights an unbroken run would have.

    Batches stream from ``split.train`` (``workers`` DataLoader processes for a folder; the images of a batch and
    their augmentation depend only on (seed, epoch, position), not on ``workers``); unreadable files are left out
    of their batch and counted in ``skipped``.

    ``module`` trains on ``device`` (default CPU) with ``recipe.amp``'s mixed precision; evaluation stays fp32.
    With a ``teacher`` (a frozen model on the same inputs) the loss adds soft distillation (``Recipe.kd_*``).
    """
    device = device or torch.device("cpu")
    rank, world = _dist(device)
    module.to(device)
    scaler = grad_scaler(recipe.amp, device)
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    torch.manual_seed(recipe.seed)
    n_train = len(split.train) if recipe.train_limit is None else min(recipe.train_limit, len(split.train))
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    decay = [p for n, p in module.named_parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for n, p in module.named_parameters() if p.ndim <= 1 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe, steps_per_epoch))
    state = State()
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck.get("kind") != kind or not _same_run(ck.get("meta"), meta):
            raise OtherRunError(f"{ckpt_path} belongs to another run ({ck.get('kind')}: {ck.get('meta')}); "
                             f"use another --out or drop --resume")
        module.load_state_dict(ck["module"])
        opt.load_state_dict(ck["optimizer"])  # its state follows the parameters onto ``device``
        sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"], device)
        state = State(ck["epoch"], ck["batch"], ck["frozen"], list(ck["history"]))
        if state.frozen and freeze is not None:
            freeze(module)
        log(f"resuming {kind} from {ckpt_path}: epoch {state.epoch + 1}, batch {state.batch}")
    elif resume:
        log(f"nothing to resume in {out}: starting a new {kind} run")

    train_model: nn.Module = module
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)

    def save(position: State) -> None:
        if rank != 0:
            return
        _atomic_save({"kind": kind, "meta": meta, "module": module.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                      "rng": rng_state(device), "epoch": position.epoch,
                      "batch": position.batch, "frozen": position.frozen, "history": position.history}, ckpt_path)

    with _Interrupts() as interrupts:
        while state.epoch < recipe.epochs:
            epoch = state.epoch
            if freeze is not None and recipe.freeze_epoch is not None and epoch >= recipe.freeze_epoch \
                    and not state.frozen:
                freeze(module)
                state.frozen = True
                log(f"epoch {epoch + 1}: BatchNorm statistics and observers frozen")
            batches = _batches(n_train, recipe.batch_size, recipe.seed, epoch, rank, world)
            split.train.set_epoch(epoch)
            set_train(module)
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            bar = _bar(len(batches), f"{kind} epoch {epoch + 1}/{recipe.epochs}", show_progress and rank == 0,
                       initial=state.batch)
            data = stream(split.train, batches[state.batch:], workers, skipped)
            for bi, (xb, yb) in enumerate(data, start=state.batch):
                if not len(yb):  # every file of this batch unreadable: nothing to learn from, move on
                    state.batch = bi + 1
                    continue
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                with autocast(recipe.amp, device):
                    out_b = train_model(xb)
                target = None
                if teacher is not None:
                    with torch.no_grad(), autocast(recipe.amp, device):
                        target = head_average(teacher(xb))
                loss = training_loss(out_b, yb, target, recipe)
                logits = head_average(out_b)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)  # clip the true gradients (a no-op without fp16 loss scaling)
                norm = nn.utils.clip_grad_norm_(module.parameters(), recipe.clip_grad or float("inf"))
                # under fp16 loss scaling an overflowing gradient is routine: the scaler skips that step and
                # lowers its scale; only a non-finite loss (or any non-finite gradient without scaling) diverges
                if not (torch.isfinite(loss) and (torch.isfinite(norm) or scaler.is_enabled())):
                    # stop before the step: one NaN update poisons every parameter (and QAT's observers)
                    if bar is not None:
                        bar.close()
                    raise DivergedError(
                        f"{kind} diverged at epoch {epoch + 1}, batch {bi + 1}: the "
                        f"{'loss' if not torch.isfinite(loss) else 'gradient norm'} is not finite; the last "
                        f"checkpoint ({ckpt_path}, {state.epoch} epochs done) is kept; try a lower --lr "
                        f"(now {recipe.lr:g})")
                scaler.step(opt)
                scaler.update()
                sched.step()
                state.batch = bi + 1
                loss_sum += loss.item() * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if interrupts.requested:
                    if bar is not None:
                        bar.close()
                    save(state)
                    _stop(state, ckpt_path)
            if bar is not None:
                bar.close()
            train_s = time.perf_counter() - t0
            set_eval(module)
            val = evaluate(module, split.val, workers=workers, skipped=skipped, device=device)
            # train_images / train_seconds: this epoch's training throughput (a resumed epoch counts its rest)
            state.history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                                  "train_top1": correct / max(1, seen), "val_top1": val,
                                  "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 2),
                                  "train_seconds": round(train_s, 3), "train_images": seen})
            state.epoch, state.batch = epoch + 1, 0
            save(state)
            if interrupts.requested:  # Ctrl-C during the evaluation: this epoch's checkpoint is the stop
                _stop(state, ckpt_path)
            log(f"{kind} epoch {epoch + 1}/{recipe.epochs}: loss {loss_sum / max(1, seen):.3f}, "
                f"val top-1 {100 * val:.1f}%")
    set_eval(module)
    return state


def head_average(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A model's logits: the average of a distilled model's two heads when it returns both ((B, C) each)."""
    if isinstance(out, tuple | list):
        return (out[0] + out[1]) * 0.5
    return out


def _average_heads_in_graph(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Make a graph that returns both heads' logits return their average, as the model does: (a + b) * 0.5 in
    fp32 at the output (after the int8 heads' dequantisation). Edited in place (the converters take a plain
    GraphModule; a wrapper module renames its parameters); returns ``graph``."""
    g = graph.graph
    out = next(n for n in g.nodes if n.op == "output")
    results = out.args[0]
    if not (isinstance(results, tuple | list) and len(results) == 2):
        raise ValueError(f"expected a graph returning the two heads' logits, got {results}")
    a, b = results
    with g.inserting_before(out):
        total = g.call_function(torch.ops.aten.add.Tensor, (a, b))
        mean = g.call_function(torch.ops.aten.mul.Tensor, (total, 0.5))
    codegen = g._codegen  # an exported graph returns a pytree: its output spec goes from a pair to one tensor
    if getattr(codegen, "pytree_info", None) is not None and codegen.pytree_info.out_spec is not None:
        codegen.pytree_info = codegen.pytree_info._replace(out_spec=torch.utils._pytree.tree_flatten(0)[1])
        out.args = ((mean,),)
    else:
        out.args = (mean,)
    g.lint()
    graph.recompile()
    return graph


def training_loss(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                  teacher_logits: torch.Tensor | None, recipe: Recipe) -> torch.Tensor:
    """The loss of one batch: cross-entropy with the labels (label smoothing), plus distillation with a teacher.

    ``out``: (B, C) logits, or a distilled model's pair (head, head_dist). Soft: ``(1 - a) CE + a T^2 KL`` on
    the logits (the pair's average). Hard (DeiT, Touvron et al. 2021, Section 4): ``(1 - a) CE(head, labels) +
    a CE(head_dist, teacher arg-max)``; a model with one head takes both terms on that head.
    """
    a = recipe.kd_alpha
    if teacher_logits is not None and recipe.distillation == "hard":
        head, head_dist = out if isinstance(out, tuple | list) else (out, out)
        return (1 - a) * F.cross_entropy(head.float(), labels, label_smoothing=recipe.label_smoothing) \
            + a * F.cross_entropy(head_dist.float(), teacher_logits.argmax(1))
    logits = head_average(out).float()
    if teacher_logits is None:
        return F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
    return (1 - a) * F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing) \
        + a * distillation_loss(logits, teacher_logits.float(), recipe.kd_temperature)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft distillation (Hinton et al.): T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean;
    the T^2 keeps its gradient's scale independent of T. student, teacher: (B, classes) logits."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                    reduction="batchmean") * t * t


def _same_run(saved: dict[str, Any] | None, meta: dict[str, Any]) -> bool:
    """Whether a checkpoint's settings are this run's; a recipe field added since it was written counts as the
    same when this run leaves it at its default (older runs trained that way)."""
    if saved is None or "recipe" not in meta or "recipe" not in saved:
        return saved == meta
    defaults = asdict(Recipe())
    recipe = {k: v for k, v in meta["recipe"].items()
              if k in saved["recipe"] or k not in defaults or v != defaults[k]}
    return saved == {**meta, "recipe": recipe}


def _stop(state: State, ckpt_path: Path) -> None:
    raise KeyboardInterrupt(
        f"interrupted at epoch {state.epoch + 1}, batch {state.batch}; checkpoint {ckpt_path} "
        "written: rerun the same command with --resume")


class _Interrupts:
    """Ctrl-C / SIGTERM become a request to stop at the next step boundary, so the checkpoint written
    then holds a consistent model/optimizer/schedule/RNG state; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt("interrupted twice: stopped without a final checkpoint")
        self.requested = True

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
            if sig is None:
                continue
            with contextlib.suppress(ValueError):  # not the main thread: keep default behaviour
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, leave=False)


# --------------------------------------------------------------------------------------------
# float training
# --------------------------------------------------------------------------------------------


def _weights_path(out: Path, model: str, resolution: int, data: str) -> Path:
    tag = "digits" if data == "digits" else Path(data).name
    return out / f"{model}_{resolution}_{tag}.safetensors"


def _hub_as_weights(model: str, weights: str | Path | None) -> tuple[str, str | Path | None]:
    """A hub id given as the model is its architecture, started from its weights."""
    from ..hub import is_hub_id

    if not is_hub_id(model):
        return model, weights
    if weights is not None:
        raise ValueError("a hub id carries its weights: drop --weights")
    from .. import resolve_pretrained

    return resolve_pretrained(model).architecture, model


def _weights_file(weights: str | Path | None) -> str | Path | None:
    """The checkpoint file behind ``weights``: itself, or a hub id's cached file (resolved once per run)."""
    from ..hub import is_hub_id

    if weights is not None and is_hub_id(str(weights)):
        from .. import resolve_pretrained

        return resolve_pretrained(str(weights)).weights
    return weights


def _starting_model(model: str, num_classes: int, resolution: int, weights_file: str | Path | None,
                    log: Callable[[str], None] | None) -> nn.Module:
    """The model to train: fresh, or from ``weights_file``; weights made for another number of classes keep
    their backbone and get a fresh classifier (logged when ``log`` is given)."""
    from ..weights import load_weights

    net = create_model(model, num_classes=num_classes, resolution=resolution)
    if weights_file is not None:
        reset = load_weights(net, weights_file, new_head=True)["reset"]
        if reset and log is not None:
            log(f"weights were made for other classes: fresh classifier for {num_classes} classes "
                f"({', '.join(reset)})")
    return net


def train(
    model: str,
    data: str = "digits",
    weights: str | Path | None = None,
    resolution: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    out: str | Path = "out/train",
    resume: bool = False,
    seed: int = 0,
    train_limit: int | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    augment: str = "auto",
    workers: int = 0,
    device: str = "auto",
    amp: str = "none",
) -> dict[str, Any]:
    """Train (or fine-tune from ``weights``) a float model on ``data``; returns weights path and top-1.

    ``data``: ``digits`` or an ImageFolder, streamed through ``workers`` DataLoader processes (see
    ``training_data``); ``augment``: ``auto`` (crop-flip for folders, none for digits), ``none``, ``crop-flip``.
    ``device``: auto, cpu, cuda, cuda:N or mps; ``amp``: none, bf16 or fp16 (see ``compute``).
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    dev = resolve_device(device)
    amp = check_amp(amp, dev)
    model, weights = _hub_as_weights(model, weights)
    info = get_model_info(model)
    resolution = info.default_resolution if resolution is None else resolution
    info.check_resolution(resolution)
    recipe = replace(Recipe(), **{k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr,
                                                          seed=seed, train_limit=train_limit,
                                                          augment=augment, amp=amp).items()
                                  if v is not None})
    out = Path(out)
    torch.manual_seed(seed)
    probe = create_model(model, resolution=resolution)
    split = load_split(data, probe.preprocess, seed, recipe.augment)
    torch.manual_seed(seed)
    net = _starting_model(model, split.num_classes, resolution, _weights_file(weights), log)
    module = Normalize(net, net.preprocess.mean, net.preprocess.std)
    meta = {"model": model, "resolution": resolution, "data": data, "num_classes": split.num_classes,
            "weights": str(weights) if weights else None, "recipe": asdict(recipe)}
    skipped = Skipped()
    state = fit(module, split, recipe, out, "train", meta, resume, set_train=lambda m: m.train(),
                set_eval=lambda m: m.eval(), show_progress=show_progress, log=log, workers=workers,
                skipped=skipped, device=dev)
    recalibration = None
    if state.history:
        n_bn = recalibrate_batchnorm(module, split.train, workers=workers, skipped=skipped, device=dev)
        if n_bn:
            after = evaluate(module, split.val, workers=workers, skipped=skipped, device=dev)
            recalibration = {"images": n_bn, "val_top1_before": state.history[-1]["val_top1"], "val_top1": after}
            log(f"BatchNorm statistics recomputed on {n_bn} training images (evaluation preprocessing): val top-1 "
                f"{100 * recalibration['val_top1_before']:.1f}% -> {100 * after:.1f}%")
    if skipped.count:
        log(skipped.summary())
    path = _weights_path(out, model, resolution, data)
    if _is_main():
        from safetensors.torch import save_file

        tmp = path.with_name("." + path.name + ".partial")
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    result = {"model": model, "resolution": resolution, "data": data, "num_classes": split.num_classes,
              "weights": str(path), "checkpoint": str(out / CHECKPOINT),
              "val_top1": recalibration["val_top1"] if recalibration else
              (state.history[-1]["val_top1"] if state.history else None), "history": state.history,
              "batchnorm_recalibration": recalibration,
              "world_size": _dist()[1], "device": str(dev), "amp": amp,
              "train_data": describe(split.train), "val_data": describe(split.val),
              "skipped": {"count": skipped.count, "first": skipped.paths}}
    if _dist()[1] > 1:
        import torch.distributed as dist

        checksums: list[Any] = [None] * _dist()[1]
        dist.all_gather_object(checksums, float(sum(p.double().sum() for p in net.parameters())))
        result["rank_param_checksums"] = checksums  # DDP keeps replicas identical: all equal
    return result


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, ds: Samples, count: int = 512, batch_size: int = 64,
                          workers: int = 0, skipped: Skipped | None = None,
                          device: torch.device | None = None) -> int:
    """Recompute every BatchNorm's running statistics as the plain mean over ``count`` training images with the
    evaluation preprocessing (``spread_indices`` order); the rest of ``module`` stays in eval mode. Returns the
    number of images used (0: no BatchNorm).

    Why: running statistics are an exponential average over the last few dozen training batches, taken while the
    weights moved and on augmented crops. After a short fine-tune on a folder they can be far from the statistics
    of the images the model is evaluated and deployed on (measured: MobileViT-XXS, 3 epochs at 224 on a 10-class
    folder, 9.5% top-1 with the running statistics, 95.5% with each batch's own, 98.0% after this).
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    module.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch below
        m.train()
    ev = ds.for_eval()
    order = spread_indices(len(ev))[:count]
    seen = 0
    for xb, _ in stream(ev, [order[i:i + batch_size] for i in range(0, len(order), batch_size)], workers, skipped):
        if len(xb):
            module(xb if device is None else xb.to(device))
            seen += len(xb)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()
    return seen


# --------------------------------------------------------------------------------------------
# QAT
# --------------------------------------------------------------------------------------------


def _qat_ready(net: nn.Module) -> nn.Module:
    """The module QAT exports: eval-mode code paths (deploy formulations, no dropout) with BatchNorm
    after convolutions in training mode, which prepare_qat_pt2e folds into the conv with simulated
    quantisation. BatchNorms PT2E cannot fold (after linears, before classifiers) are folded now."""
    from ..base import ImageClassifier
    from ..layers import ConvNormAct

    net.eval()
    for m in list(net.modules()):
        if hasattr(m, "fuse") and not isinstance(m, ConvNormAct | ImageClassifier):
            m.fuse()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    return net


def int8_target(model: str, backend: str, resolution: int | None) -> tuple[Any, int]:
    """(the backend's converter, the resolution) for int8 work on ``model``: refuses a backend without int8 and a
    resolution the model does not take."""
    from converters import get_converter

    conv = get_converter(backend)
    if "int8" not in conv.precisions:
        raise ValueError(f"{backend} has no int8 path")
    info = get_model_info(model)
    resolution = info.default_resolution if resolution is None else resolution
    info.check_resolution(resolution)
    return conv, resolution


def _teacher_source(spec: str) -> tuple[str, str | Path] | None:
    """(architecture, weights) of a ``--teacher`` spec, or None for ``self``; checked before any training."""
    from ..hub import is_hub_id

    if spec == "self":
        return None
    if is_hub_id(spec):
        arch, weights = _hub_as_weights(spec, None)
        return arch, weights
    arch, _, weights = spec.partition(":")
    if not weights:
        raise ValueError(f"--teacher {spec}: a teacher needs trained weights: MODEL:WEIGHTS, a hub id, or self")
    get_model_info(arch)  # an unknown model is named here
    if not Path(weights).is_file():
        raise ValueError(f"--teacher {spec}: weights file not found: {weights}")
    return arch, weights


def _teacher(spec: str, num_classes: int, resolution: int,
             float_model: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
    """The frozen teacher of ``--teacher`` (with its input normalisation) and its name for the ledger."""
    from ..weights import load_weights

    source = _teacher_source(spec)
    if source is None:
        return float_model().eval(), "self (the float model)"  # eval: its top-1 uses running statistics
    arch, weights = source
    get_model_info(arch).check_resolution(resolution)
    net = create_model(arch, num_classes=num_classes, resolution=resolution)
    try:
        load_weights(net, _weights_file(weights))
    except ValueError as e:  # WeightsError: another class count or architecture, named in one line
        raise ValueError(f"--teacher {spec}: {e} (the teacher must predict the data's {num_classes} classes)") \
            from None
    return Normalize(net, net.preprocess.mean, net.preprocess.std).eval(), spec


def qat_graphs(module: nn.Module, example: torch.Tensor, quantizer: Callable[[], Any],
               device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the fake-quantised graph to train on ``device``, its CPU twin) of ``module``, exported once with a dynamic
    batch and prepared twice with fresh quantizers from ``quantizer()``.

    The graph trains on ``device`` (device arguments rewritten by ``move_to_device_pass``); its trained state goes
    into the twin with :func:`load_into_twin`, and the twin is what ``convert_pt2e`` and the converters take. The
    CPU takes the same two-graph path, so the tests run the one a GPU takes.
    """
    from torch.export.passes import move_to_device_pass
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    ep = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    on_device = ep if device.type == "cpu" else move_to_device_pass(ep, str(device))
    training_graph = prepare_qat_pt2e(on_device.module(), quantizer()).to(device)
    return training_graph, prepare_qat_pt2e(ep.module(), quantizer())


def load_into_twin(training_graph: nn.Module, twin: nn.Module) -> None:
    """Copy a trained fake-quantised graph's state (weights, BatchNorm statistics, observer ranges, fake-quant
    scales and on/off flags) into its CPU twin (the observers resize their buffers on load)."""
    twin.load_state_dict({k: v.detach().cpu() for k, v in training_graph.state_dict().items()})


def qat(
    model: str,
    backend: str,
    data: str = "digits",
    weights: str | Path | None = None,
    resolution: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    out: str | Path = "out/qat",
    resume: bool = False,
    seed: int = 0,
    train_limit: int | None = None,
    float_epochs: int | None = None,
    convert_artifact: bool = True,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    keep_float: list[str] | None = None,
    augment: str = "auto",
    workers: int = 0,
    device: str = "auto",
    amp: str = "none",
    teacher: str | None = None,
    kd_alpha: float | None = None,
    kd_temperature: float | None = None,
    distillation: str | None = None,
) -> dict[str, Any]:
    """Quantization-aware fine-tuning for ``backend``, conversion, and the accuracy ledger.

    ``teacher``: ``self`` (the float model QAT starts from), ``MODEL:WEIGHTS`` or a hub id. QAT then runs twice
    from the same float weights, without the teacher (``out/without_teacher``) and with it (``out``, the run that
    is converted), and the ledger shows both (``qat_int8_top1``, ``qat_kd_int8_top1``, step ``kd_vs_qat``).
    ``distillation``: ``soft`` (default) or ``hard`` (DeiT-style; a model with a distillation head trains that
    head on the teacher's arg-max: the QAT graph returns both heads, and the artifact their average).

    ``keep_float``: module or class names left in float in the PTQ baseline, the QAT graph and the artifact
    (mixed precision; see ``converters.keep_float_modules``). ``data``, ``augment``, ``workers``: as for
    :func:`train` (calibration and every evaluation use the evaluation preprocessing). ``device``, ``amp``: where
    and in which precision the float model and the fake-quantised graph train (and the float model is evaluated);
    the int8 graphs (PTQ, ``convert_pt2e``) run on the CPU, as the converters take them.

    With ``convert_artifact=False`` it stops after training and the PyTorch ledger entries
    (the artifact column stays None).

    Without ``weights`` the float model is trained first on the same data (and the result says so).
    Returns ``ledger`` (float, PTQ int8, QAT int8 and artifact top-1), ``artifact``, ``checkpoint``.
    """
    if distillation not in (None, "soft", "hard"):
        raise ValueError(f"--distillation {distillation}: choose soft or hard")
    if distillation and not teacher:
        raise ValueError(f"--distillation {distillation} distils from a teacher: add --teacher self (the float "
                         "model) or --teacher MODEL:WEIGHTS")
    if teacher:
        _teacher_source(teacher)  # a bad spec fails now (before the heavy imports and any training)
    from torchao.quantization.pt2e import (
        disable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from converters import (
        calibrate_and_quantize,
        convert,
        keep_float_modules,
        open_artifact,
        quiet,
        sqnr_db,
    )

    log = log or (lambda s: print(s, file=sys.stderr))
    dev = resolve_device(device)
    amp = check_amp(amp, dev)
    model, weights = _hub_as_weights(model, weights)
    conv, resolution = int8_target(model, backend, resolution)
    out = Path(out)
    notes = []
    float_result = None
    if weights is None:
        float_out = out / "float"
        notes.append(f"no --weights: trained the float model first ({float_out})")
        log(notes[-1])
        float_result = train(model, data=data, resolution=resolution, epochs=float_epochs, batch_size=batch_size,
                             out=float_out, resume=resume, seed=seed, train_limit=train_limit,
                             show_progress=show_progress, log=log, augment=augment, workers=workers,
                             device=str(dev), amp=amp)
        weights = float_result["weights"]

    recipe = Recipe.for_qat(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, train_limit=train_limit,
                            augment=augment, amp=amp, kd_alpha=kd_alpha, kd_temperature=kd_temperature,
                            distillation=distillation)
    if not 0 <= recipe.kd_alpha <= 1 or recipe.kd_temperature <= 0:
        raise ValueError(f"--kd-alpha must be in [0, 1] and --kd-temperature > 0, got {recipe.kd_alpha:g} and "
                         f"{recipe.kd_temperature:g}")
    torch.manual_seed(seed)
    probe = create_model(model, resolution=resolution)
    split = load_split(data, probe.preprocess, seed, recipe.augment)
    skipped = Skipped()

    weights_file = _weights_file(weights)
    logged = []

    def float_model() -> nn.Module:  # built twice (reference, QAT start): resolved and logged once
        net = _starting_model(model, split.num_classes, resolution, weights_file, None if logged else log)
        logged.append(True)
        return Normalize(net, net.preprocess.mean, net.preprocess.std)

    ref = conv.prepare_model(reparameterize_model(float_model()), "int8")
    hits: dict[str, np.ndarray] = {"float": correct(ref.to(dev), split.val, workers=workers, device=dev)}
    ref.to("cpu")
    ledger: dict[str, Any] = {"float_top1": float(hits["float"].mean()), "ptq_int8_top1": None,
                              "qat_int8_top1": None, "qat_kd_int8_top1": None, "quantized_top1": None,
                              "artifact_top1": None}
    log(f"float top-1 {100 * ledger['float_top1']:.1f}%")
    calib = first_images(split.train, 64, skipped)  # (64, 3, R, R), evaluation preprocessing
    def quantizer(model: nn.Module, qat_mode: bool = False) -> Any:
        q = conv.quantizer("int8", qat=qat_mode)
        if keep_float:
            kept = keep_float_modules(q, model, keep_float)
            if not qat_mode:
                notes.append(f"kept in float: {', '.join(kept)}")
        return q

    ptq = calibrate_and_quantize(ref, quantizer(ref), calib, conv.fold_quantize)
    ledger["ptq_int8_top1"] = evaluate(ptq, split.val, workers=workers)
    log(f"post-training int8 top-1 {100 * ledger['ptq_int8_top1']:.1f}%")

    # graph-mode QAT with the backend's own quantizer
    def freeze(m: nn.Module) -> None:
        m.apply(disable_observer)
        move_exported_model_to_eval(m)  # BatchNorm uses (and stops updating) running statistics

    def run_qat(run_out: Path, teacher_module: nn.Module | None, run_meta: dict[str, Any]) -> nn.Module:
        """One QAT run from the float weights: its trained CPU twin, in eval mode (hard distillation of a
        model with a distillation head: the twin returns both heads' logits)."""
        net = _qat_ready(float_model())
        if teacher_module is not None and recipe.distillation == "hard" and hasattr(net.model, "both_heads") \
                and getattr(net.model, "head_dist", None) is not None:
            net.model.both_heads = True
        qat_src = conv.prepare_model(net, "int8")
        with quiet():
            training_graph, twin = qat_graphs(qat_src, calib[:2], lambda: quantizer(qat_src, qat_mode=True), dev)
        frozen = {"on": False}

        def set_train(m: nn.Module) -> None:
            if not frozen["on"]:
                move_exported_model_to_train(m)

        def freeze_and_mark(m: nn.Module) -> None:
            frozen["on"] = True
            freeze(m)

        fit(training_graph, split, recipe, run_out, "qat", run_meta, resume, set_train=set_train,
            set_eval=move_exported_model_to_eval, freeze=freeze_and_mark, show_progress=show_progress, log=log,
            workers=workers, skipped=skipped, device=dev, teacher=teacher_module)
        load_into_twin(training_graph, twin)
        move_exported_model_to_eval(twin)
        return twin

    meta = {"model": model, "backend": backend, "resolution": resolution, "data": data,
            "weights": str(weights), "recipe": asdict(recipe)}
    # without a teacher: the plain run is the one converted; with one, the plain run goes to out/without_teacher
    # (the ledger's comparison) and the distilled run to out
    plain_out = out / "without_teacher" if teacher else out
    prepared = run_qat(plain_out, None, meta)
    fake_logits, labels = outputs(prepared, split.val, workers=workers, skipped=skipped)
    hits["qat"] = fake_logits.argmax(1) == labels
    ledger["qat_int8_top1"] = float(hits["qat"].mean())
    log(f"QAT fake-quant int8 top-1 {100 * ledger['qat_int8_top1']:.1f}%")
    if teacher:
        teacher_module, teacher_name = _teacher(teacher, split.num_classes, resolution, float_model)
        ledger["teacher"] = teacher_name
        ledger["distillation"] = recipe.distillation
        ledger["teacher_top1"] = evaluate(teacher_module.to(dev), split.val, workers=workers, device=dev)
        log(f"teacher {teacher_name}: top-1 {100 * ledger['teacher_top1']:.1f}%")
        prepared = run_qat(out, teacher_module, {**meta, "teacher": teacher_name})
        fake_logits, labels = outputs(prepared, split.val, workers=workers, skipped=skipped)
        hits["qat_kd"] = fake_logits.argmax(1) == labels
        ledger["qat_kd_int8_top1"] = float(hits["qat_kd"].mean())
        log(f"QAT with the teacher, fake-quant int8 top-1 {100 * ledger['qat_kd_int8_top1']:.1f}%")
    hits["converted_qat"] = hits["qat_kd" if teacher else "qat"]
    with quiet():
        quantized = convert_pt2e(prepared, fold_quantize=conv.fold_quantize)
        x1 = first_images(split.val, 1)  # (1, 3, R, R): the export example, decoded once
        if isinstance(quantized(x1), tuple | list):
            # hard distillation trained both heads: the artifact returns their average, as the float model does
            quantized = _average_heads_in_graph(quantized)
    quantized_logits, labels = outputs(quantized, split.val, workers=workers)
    hits["quantized"] = quantized_logits.argmax(1) == labels
    ledger["quantized_top1"] = float(hits["quantized"].mean())
    # how far convert_pt2e (fake quantizers -> quantize/dequantize pairs) moved the logits; measured 18-20 dB on
    # the digits model, with or without BatchNorm folded before QAT, so not the BatchNorm fold (BENCHMARKS.md)
    ledger["convert_sqnr_db"] = sqnr_db(fake_logits, quantized_logits)
    log(f"quantised graph (convert_pt2e) top-1 {100 * ledger['quantized_top1']:.1f}% "
        f"(logits {ledger['convert_sqnr_db']:.1f} dB from fake-quant)")
    with quiet():
        reference = out / f"{model}_{resolution}_{backend}_int8.qat.pt2"
        tmp = reference.with_name("." + reference.name + ".partial")
        torch.export.save(torch.export.export(quantized, (x1,)), str(tmp))
        os.replace(tmp, reference)

    if skipped.count:
        notes.append(skipped.summary())
        log(notes[-1])
    base = {"model": model, "backend": backend, "resolution": resolution, "data": data, "ledger": ledger,
            "checkpoint": str(out / CHECKPOINT), "weights": str(weights), "reference": str(reference),
            "notes": notes, "float_training": float_result, "artifact": None, "check": None,
            "train_data": describe(split.train), "val_data": describe(split.val),
            "skipped": {"count": skipped.count, "first": skipped.paths}, "device": str(dev), "amp": amp}
    if not convert_artifact:
        notes.append("conversion skipped (--no-convert)")
        return base
    result_convert = convert(model, to=backend, precision="int8", resolution=resolution, weights=weights,
                             out=out, check=True, data=data if data == "digits" else "photos",
                             num_classes=split.num_classes, quantized_model=quantized,
                             quantization_info={"source": "qat", "reference": str(reference.resolve()),
                                                "quantizer": type(conv.quantizer("int8")).__name__,
                                                "checkpoint": str((out / CHECKPOINT).resolve()),
                                                "recipe": asdict(recipe), "keep_float": keep_float},
                             show_progress=show_progress)
    artifact = Path(result_convert["artifact"])
    check = result_convert["check"] or {}
    # the host runtime, or for Core ML off macOS the NumPy MIL executor (the numerics check judges)
    with open_artifact(artifact) as run:  # loaded once, fed the validation set batch by batch
        artifact_logits, labels = outputs(lambda x: run(x.numpy()), split.val, workers=workers)
    hits["artifact"] = artifact_logits.argmax(1) == labels
    ledger["artifact_top1"] = float(hits["artifact"].mean())
    # the speed of what was kept in float (--keep-float) is part of the trade: the ledger records it next to top-1
    ledger["keep_float"] = keep_float or []
    ledger["latency"] = host_latency(artifact, x1.numpy())
    ledger.update(ledger_steps(hits))
    _store_ledger(artifact, ledger, notes)
    return {**base, "artifact": str(artifact), "check": check}


# An artifact passes the ledger when its top-1 is within this of the quantised graph's (fraction).
LEDGER_TOLERANCE = 0.015


def ledger_steps(hits: dict[str, np.ndarray]) -> dict[str, Any]:
    """Paired top-1 differences between the ledger's stages (with 95% intervals) and the pass verdict:
    the artifact within 1.5 points of the quantised graph it was converted from. ``converted_qat``: the QAT run
    that was converted (with the teacher when there is one)."""
    steps = {}
    for name, a, b in (("qat_vs_float", "qat", "float"), ("kd_vs_qat", "qat_kd", "qat"),
                       ("quantized_vs_qat", "quantized", "converted_qat"),
                       ("artifact_vs_quantized", "artifact", "quantized")):
        if a in hits and b in hits:
            steps[name] = paired_difference(hits[a], hits[b])
    out: dict[str, Any] = {"steps": steps}
    if "artifact_vs_quantized" in steps:
        out["passed"] = bool(abs(steps["artifact_vs_quantized"]["difference"]) <= LEDGER_TOLERANCE + 1e-12)
    return out


def _store_ledger(artifact: Path, ledger: dict[str, Any], notes: list[str]) -> None:
    from converters import read_sidecar, write_sidecar

    meta = read_sidecar(artifact)
    meta["ledger"] = {**ledger, "notes": notes}
    write_sidecar(artifact, meta)


def ledger_markdown(result: dict[str, Any]) -> str:
    """The accuracy ledger as a Markdown table: where accuracy went between float and the artifact,
    each step a paired difference on the same images with its 95% interval."""
    led = result["ledger"]
    steps = led.get("steps") or {}
    rows = [("float (PyTorch)", led["float_top1"], None),
            ("post-training int8 (calibration only)", led["ptq_int8_top1"], None),
            ("QAT int8 (fake-quant PyTorch)", led["qat_int8_top1"], steps.get("qat_vs_float"))]
    if led.get("qat_kd_int8_top1") is not None:
        rows.append((f"QAT int8, {led.get('distillation', 'soft')} distillation from {led.get('teacher')} "
                     f"(teacher {100 * led['teacher_top1']:.2f}%)",
                     led["qat_kd_int8_top1"], steps.get("kd_vs_qat")))
    rows += [("quantised graph (convert_pt2e)", led.get("quantized_top1"), steps.get("quantized_vs_qat")),
            (f"converted artifact ({result['backend']}, host)", led["artifact_top1"],
             steps.get("artifact_vs_quantized"))]
    lines = [f"### {result['model']} @ {result['resolution']} on {result['data']}: int8 for {result['backend']}", "",
             "| stage | top-1 | vs previous stage (95% interval) |", "|---|---:|---:|"]
    for name, v, step in rows:
        if v is None:
            lines.append(f"| {name} | n/a | |")
            continue
        diff = "" if step is None else (f"{100 * step['difference']:+.2f} pt ({100 * step['ci95'][0]:+.2f}, "
                                        f"{100 * step['ci95'][1]:+.2f}; {step['only_first']} gained, "
                                        f"{step['only_second']} lost)")
        lines.append(f"| {name} | {100 * v:.2f}% | {diff} |")
    if led.get("convert_sqnr_db") is not None:
        lines.append(f"\nconvert_pt2e step: fake quantizers become quantize/dequantize pairs and BatchNorm folds into "
                     f"the conv weights; logits {led['convert_sqnr_db']:.1f} dB from the fake-quant model's.")
    if "passed" in led:
        lines.append(f"ledger {'PASS' if led['passed'] else 'FAIL'}: artifact within "
                     f"{100 * LEDGER_TOLERANCE:g} pt of the quantised graph")
    lat = led.get("latency")
    kept = ", ".join(led.get("keep_float") or []) or "none (every quantisable op in int8)"
    if lat:
        lines.append(f"artifact latency on this host ({lat['host']}): median {lat['median_ms']:.2f} ms, p90 "
                     f"{lat['p90_ms']:.2f} ms (batch 1, one thread, {lat['runs']} runs); kept in float: {kept}")
    elif "latency" in led:
        lines.append(f"artifact latency: no {result['backend']} runtime on this host; kept in float: {kept}")
    lines += ["", f"artifact: `{result['artifact'] or '-'}`  checkpoint: `{result['checkpoint']}`"]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)
