"""Training CloSe-Net on labelled CloSe-D scans.

The recipe is the reference one (every step takes ``n_points`` = 2048 random
points of each scan in the batch, Adam, cross-entropy) plus augmentations that
matter for real scans: rotation about the vertical (y) axis, per-axis scale,
colour jitter and colour dropout, position noise, and non-uniform sampling
density. Geometry augmentations are applied to the whole scan and the scan is
then normalized again (bounding-box centre at 0, / largest side), so training
inputs live in exactly the frame the predictor feeds to the network.

State for ``--resume`` (model, optimizer, scheduler, epoch, numpy and torch
RNG states, history) is written atomically after every epoch to
``<out>.state/state.pt``; a resumed run continues the same random stream, so
it ends with the same weights as an uninterrupted one. The final checkpoint
is written only when training finishes: a cancelled or failed run never
touches an existing model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from close_blender import metrics
from close_blender.defaults import PASSES
from close_blender.errors import Cancelled, CheckpointError, CloseError, ScanError
from close_blender.fileio import atomic_path
from close_blender.labels import CLASS_NAMES, N_CLASSES, garments_from_labels
from close_blender.scan_io import check_scan, colors_to_unit, load_scan, scan_paths
from inference.closenet import CloseNet, CloseNetConfig

Progress = Callable[[float, str], None]
STATE_NAME = "state.pt"


# ---------------------------------------------------------------- configuration


@dataclass
class AugmentConfig:
    """Augmentations; each can be switched off by setting it to 0 / False."""

    rotate_y: bool = True  # uniform heading about the vertical axis
    axis_scale: float = 0.08  # per-axis scale in [1 - s, 1 + s] before re-normalizing
    shrink: float = 0.08  # then the whole cloud times U(1 - shrink, 1) (outliers widen bboxes)
    brightness: float = 0.15  # rgb * U(1 - b, 1 + b)
    contrast: float = 0.15  # (rgb - mean) * U(1 - c, 1 + c) + mean
    channel_gain: float = 0.06  # per-channel rgb gain (white balance)
    color_noise: float = 0.02  # per-point rgb noise sigma
    color_dropout: float = 0.1  # probability that a scan's colours are a flat grey
    position_noise: float = 0.002  # per-point xyz noise sigma (normalized units)
    density: float = 0.5  # probability of non-uniform (directionally biased) sampling
    density_strength: float = 3.0  # max log-ratio of sampling density across the scan
    channel_shuffle: float = 0.0  # probability of a random RGB channel order (another colourway)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 4
    n_points: int = 2048
    steps_per_epoch: int = 0  # 0: one pass over the training scans (ceil(n / batch))
    lr: float = 1e-3
    lr_min_ratio: float = 0.05  # cosine decay to lr * ratio over all steps
    weight_decay: float = 0.0
    seed: int = 0
    # The last BatchNorm acts on the logits: with its scale at 1 the logits stay near unit
    # variance and cross-entropy cannot fall below ~1.8 until that scale has grown, which
    # plain Adam steps do slowly. Start it at ``logit_scale_init`` and let the logit BN
    # learn ``head_lr_mult`` times faster (fresh training only; --init keeps its weights).
    logit_scale_init: float = 4.0
    head_lr_mult: float = 10.0
    extra_garments_prob: float = 0.3  # add 1-3 absent classes to the garments vector
    # Cross-entropy over the listed garments only: the product labels every point with
    # one of the garments in the vector, so the loss asks the same question.
    mask_absent: bool = True
    # Class-balanced cross-entropy: class c weighs freq_c ** -class_balance (freq = its share
    # of the training points), scaled to a mean point weight of 1. 0 = plain cross-entropy;
    # 0.5 lifts small garments (scarf, hat, swimwear) that strict mIoU counts as much as body.
    class_balance: float = 0.0
    # Per-sample balance: within each sample, class c weighs share_c ** -scan_balance (its
    # share of that sample's points), mean point weight 1 per sample. Strict mIoU scores
    # every class of a scan alike, so a strip of T-shirt under an open coat (a few dozen
    # points) counts as much as the coat; this asks the loss the same question.
    scan_balance: float = 0.0
    # Weight averaging (SWA): from this fraction of all steps on, keep the running mean of the
    # weights and BatchNorm statistics after every step and return it instead of the last
    # weights. 0 = off. Validation then scores the averaged model: the last weights of a
    # small-batch run wander by several points of validation mIoU from epoch to epoch.
    average_from: float = 0.0
    val_max_points: int = 8192  # random subset of each validation scan (seeded, fixed)
    threads: int = 0  # torch intra-op threads; 0 = leave as is
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d or {})
        aug = AugmentConfig(**(d.pop("augment", None) or {}))
        try:
            return cls(augment=aug, **d)
        except TypeError as exc:
            raise CloseError(f"unknown training option ({exc})",
                             "see docs/training.md for the options") from None


def load_config_file(path: str | Path) -> tuple[CloseNetConfig, TrainConfig]:
    """A YAML file with ``model`` (CloseNetConfig fields) and ``train`` (TrainConfig)."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CloseError(f"cannot read the config {p} ({exc})", "give a YAML file") from None
    if not isinstance(data, dict):
        raise CloseError(f"{p.name} is not a mapping", "it needs model: and train: sections")
    unknown = set(data) - {"model", "train", "notes"}
    if unknown:
        raise CloseError(f"{p.name} has unknown sections: {', '.join(sorted(unknown))}",
                         "use model: and train:")
    try:
        model_cfg = CloseNetConfig.from_dict(data.get("model") or {})
    except CheckpointError as exc:
        raise CloseError(f"{p.name}: {exc.message}", exc.hint) from None
    return model_cfg, TrainConfig.from_dict(data.get("train") or {})


# ---------------------------------------------------------------- data


@dataclass
class Scan:
    """One labelled scan in memory (compact dtypes)."""

    name: str
    points: np.ndarray  # (N, 3) f32
    normals: np.ndarray  # (N, 3) f32
    colors: np.ndarray  # (N, 3) f32 in [0, 1]
    canon: np.ndarray  # (N, 3) f32
    labels: np.ndarray  # (N,) int64
    garments: np.ndarray  # (18,) f32 0/1
    weights: np.ndarray | None = None  # (N,) f32 per-point loss weight (fine-tuning)

    def __len__(self) -> int:
        return len(self.points)


def scan_from_arrays(arrays: dict[str, np.ndarray], name: str = "scan") -> Scan:
    """A :class:`Scan` from CloSe-D arrays; labels are required."""
    if "labels" not in arrays:
        raise ScanError(f"{name} has no 'labels'",
                        "training needs labelled scans (CloSe-D files with a labels array)")
    check_scan(arrays, ("points", "colors", "normals", "canon_pose", "labels"), source=name)
    labels = np.asarray(arrays["labels"]).astype(np.int64)
    garments = garments_from_labels(labels).astype(np.float32)
    return Scan(name=name,
                points=np.asarray(arrays["points"], np.float32),
                normals=np.asarray(arrays["normals"], np.float32),
                colors=colors_to_unit(arrays["colors"]),
                canon=np.asarray(arrays["canon_pose"], np.float32),
                labels=labels, garments=garments)


def load_scans(paths: Iterable[str | Path], progress: Progress | None = None) -> list[Scan]:
    """Read every ``.npz`` in ``paths`` (files or folders) into memory, checked."""
    files = scan_paths(paths)
    scans = []
    for i, f in enumerate(files):
        arrays = load_scan(f, require=("points",))
        scans.append(scan_from_arrays(arrays, f.name))
        if progress is not None:
            progress((i + 1) / len(files), f"loading {f.name}")
    return scans


def data_fingerprint(scans: Sequence[Scan]) -> str:
    """A short hash of the names and sizes of a scan set (to refuse a resume on other data)."""
    h = hashlib.sha256()
    for s in scans:
        h.update(f"{s.name}:{len(s)};".encode())
    return h.hexdigest()[:16]


def _normalize(xyz: np.ndarray) -> np.ndarray:
    lo, hi = xyz.min(0), xyz.max(0)
    return (xyz - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-9)


def sample_indices(scan: Scan, n_points: int, rng: np.random.Generator,
                   aug: AugmentConfig | None = None) -> np.ndarray:
    """``n_points`` random points of the scan (with replacement only if it is smaller);
    with ``aug.density`` probability the density varies along a random direction."""
    n = len(scan)
    replace = n < n_points
    if aug is not None and aug.density > 0 and rng.random() < aug.density:
        d = rng.normal(size=3)
        d /= np.linalg.norm(d) + 1e-12
        proj = scan.points @ d.astype(np.float32)
        logit = rng.uniform(0, aug.density_strength) * proj / max(float(np.ptp(proj)), 1e-9)
        w = np.exp(logit - logit.max()).astype(np.float64)
        return rng.choice(n, n_points, replace=replace, p=w / w.sum())
    if replace:
        return rng.choice(n, n_points, replace=True)
    return rng.choice(n, n_points, replace=False)


def augment_sample(scan: Scan, idx: np.ndarray, rng: np.random.Generator,
                   aug: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 9) xyz|rgb|normal, canon (n, 3)) for the sampled indices, augmented.

    Geometry changes act on the whole scan, which is then re-normalized like CloSe-D,
    so the sample sits in the frame the predictor uses.
    """
    xyz = scan.points.astype(np.float32)
    nrm = scan.normals[idx]
    if aug.rotate_y or aug.axis_scale > 0:
        m = np.eye(3, dtype=np.float32)
        if aug.rotate_y:
            a = rng.uniform(0, 2 * math.pi)
            c, s = math.cos(a), math.sin(a)
            m = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32)
        if aug.axis_scale > 0:
            sc = rng.uniform(1 - aug.axis_scale, 1 + aug.axis_scale, 3).astype(np.float32)
            m = m * sc[None, :]  # rotate then scale each axis (row vectors: x @ m)
            # normals transform with the inverse transpose
            nrm = nrm @ np.linalg.inv(m).T.astype(np.float32)
        else:
            nrm = nrm @ m
        nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        xyz = _normalize(xyz @ m)
    p = xyz[idx]
    if aug.shrink > 0:
        p = p * rng.uniform(1 - aug.shrink, 1.0)
    if aug.position_noise > 0:
        p = p + rng.normal(0, aug.position_noise, p.shape).astype(np.float32)
    rgb = scan.colors[idx].copy()
    if aug.color_dropout > 0 and rng.random() < aug.color_dropout:
        rgb[:] = 0.5
    else:
        if aug.brightness > 0:
            rgb *= rng.uniform(1 - aug.brightness, 1 + aug.brightness)
        if aug.contrast > 0:
            mean = rgb.mean(0, keepdims=True)
            rgb = (rgb - mean) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + mean
        if aug.channel_gain > 0:
            rgb *= rng.uniform(1 - aug.channel_gain, 1 + aug.channel_gain, 3).astype(np.float32)
        if aug.color_noise > 0:
            rgb += rng.normal(0, aug.color_noise, rgb.shape).astype(np.float32)
        if aug.channel_shuffle > 0 and rng.random() < aug.channel_shuffle:
            rgb = rgb[:, rng.permutation(3)]
        rgb = rgb.clip(0.0, 1.0)
    pts = np.concatenate([p, rgb, nrm], axis=1).astype(np.float32)
    return pts, scan.canon[idx]


def garments_input(scan: Scan, rng: np.random.Generator, extra_prob: float) -> np.ndarray:
    """The scan's garments vector, sometimes with 1-3 absent classes added (so the model
    does not rely on an exact list; auto-detect runs with all classes set)."""
    g = scan.garments.copy()
    if extra_prob > 0 and rng.random() < extra_prob:
        absent = np.flatnonzero(g == 0)
        if len(absent):
            k = min(len(absent), int(rng.integers(1, 4)))
            g[rng.choice(absent, k, replace=False)] = 1
    return g


def mask_unlisted(logits: torch.Tensor, garments: torch.Tensor) -> torch.Tensor:
    """(B, C, N) logits with the classes missing from ``garments`` (B, C) pushed far down.

    The listed classes keep their logits, so a loss over the result is the cross-entropy
    of choosing among the listed garments only.
    """
    return logits.masked_fill(garments[:, :, None] == 0, -1e4)


def class_weights(scans: Sequence[Scan], power: float) -> torch.Tensor | None:
    """(18,) loss weight per class, ``freq ** -power`` scaled so a mean point weighs 1."""
    if power <= 0:
        return None
    counts = np.zeros(N_CLASSES, np.float64)
    for scan in scans:
        counts += np.bincount(scan.labels, minlength=N_CLASSES)[:N_CLASSES]
    freq = counts / max(counts.sum(), 1.0)
    w = np.zeros_like(freq)
    seen = freq > 0
    w[seen] = freq[seen] ** -float(power)
    w /= float((freq * w).sum())
    return torch.from_numpy(w).float()


def scan_balanced_weights(labels: torch.Tensor, power: float,
                          n_classes: int = N_CLASSES) -> torch.Tensor:
    """(B, N) point weights: in each sample, class c weighs share_c ** -power, mean 1."""
    counts = torch.zeros(labels.shape[0], n_classes).scatter_add_(
        1, labels, torch.ones(labels.shape, dtype=torch.float32))
    per_class = (counts / labels.shape[1]).clamp_min(1e-12) ** -float(power)
    w = per_class.gather(1, labels)
    return w / w.mean(dim=1, keepdim=True)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           class_weight: torch.Tensor | None,
                           point_weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with optional per-class and per-point weights, a weighted mean."""
    if point_weight is None:
        return F.cross_entropy(logits, labels, weight=class_weight)
    ce = F.cross_entropy(logits, labels, weight=class_weight, reduction="none")
    total = point_weight if class_weight is None else point_weight * class_weight[labels]
    return (ce * point_weight).sum() / total.sum().clamp_min(1e-12)


def make_batch(scans: Sequence[Scan], rng: np.random.Generator, n_points: int,
               aug: AugmentConfig | None, extra_prob: float) -> dict[str, torch.Tensor]:
    """Stack one augmented ``n_points`` sample per scan into network inputs."""
    pts, canon, garm, labels, weights = [], [], [], [], []
    for scan in scans:
        idx = sample_indices(scan, n_points, rng, aug)
        if aug is None:
            p = np.concatenate([scan.points[idx], scan.colors[idx], scan.normals[idx]], 1)
            c = scan.canon[idx]
        else:
            p, c = augment_sample(scan, idx, rng, aug)
        pts.append(p)
        canon.append(c)
        garm.append(garments_input(scan, rng, extra_prob))
        labels.append(scan.labels[idx])
        weights.append(np.ones(len(idx), np.float32) if scan.weights is None
                       else scan.weights[idx])
    return {"points": torch.from_numpy(np.stack(pts)).float(),
            "canon": torch.from_numpy(np.stack(canon)).float(),
            "garments": torch.from_numpy(np.stack(garm)).float(),
            "labels": torch.from_numpy(np.stack(labels)).long(),
            "weights": torch.from_numpy(np.stack(weights)).float()}


# ---------------------------------------------------------------- metrics


def confusion(pred: np.ndarray, gt: np.ndarray, n: int = N_CLASSES) -> np.ndarray:
    """(n, n) int64 confusion matrix, rows = ground truth (the core's, argument order kept)."""
    return metrics.confusion_matrix(gt, pred, n)


def summarize_confusions(cms: Sequence[np.ndarray]) -> dict[str, Any]:
    """mIoU both ways, accuracy and per-class IoU over a set of scans.

    The conventions are those of :mod:`close_blender.metrics`: ``miou_reference`` per
    scan over all 18 classes (a class absent from both prediction and truth scores
    1.0), ``miou_strict`` per scan over the classes present in either, both averaged
    over scans; ``per_class_iou`` from the summed confusion matrix, None for classes
    that never occur.
    """
    ious = [metrics.per_class_iou(cm) for cm in cms]
    strict = [metrics.miou_strict(iou) for iou in ious]
    total = np.sum(cms, axis=0) if len(cms) else np.zeros((N_CLASSES, N_CLASSES), np.int64)
    pooled = metrics.per_class_iou(total)
    return {
        "miou_strict": float(np.nanmean(strict)) if strict else float("nan"),
        "miou_reference": (float(np.mean([metrics.miou_reference(iou) for iou in ious]))
                           if ious else float("nan")),
        "accuracy": float(np.trace(total) / max(total.sum(), 1)),
        "per_class_iou": {CLASS_NAMES[i]: (None if np.isnan(pooled[i]) else float(pooled[i]))
                          for i in range(N_CLASSES)},
        "n_scans": len(cms),
        "n_points": int(total.sum()),
    }


def evaluate_scans(model: CloseNet, scans: Sequence[Scan], max_points: int = 0,
                   seed: int = 0, garments: str = "scan", restrict: bool = True,
                   passes: int = 1, fallback: CloseNet | None = None,
                   cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Whole-scan predictions (the predictor's random 2048 chunks, eval path) against labels.

    ``max_points`` > 0 evaluates a fixed random subset of each scan (a random subset of a
    random subset keeps the chunks' density, so the estimate is unbiased). ``garments``:
    ``scan`` uses the classes present in the labels, ``all`` sets all 18. ``restrict``
    labels every point with a listed class, as Segment in Blender does. ``passes``
    random chunkings are averaged per scan (the summary records the count). With
    ``fallback`` (a gated version's starting weights) each scan is labelled as
    :class:`~inference.predictor.GatedPredictor` labels it.
    """
    from inference.predictor import predictor_for

    was_training = model.training
    model.eval()
    try:
        predictor = predictor_for(model, fallback, device="cpu")
        cms, tuned = [], 0
        for i, scan in enumerate(scans):
            if cancelled is not None and cancelled():
                raise Cancelled()
            idx = np.arange(len(scan))
            if max_points and len(scan) > max_points:
                idx = np.sort(np.random.default_rng([seed, i]).choice(len(scan), max_points,
                                                                       replace=False))
            g = scan.garments if garments == "scan" else np.ones(N_CLASSES, np.float32)
            pred = predictor.predict(scan.points[idx], scan.colors[idx], scan.normals[idx],
                                     scan.canon[idx], g, passes=passes, seed=seed + i,
                                     restrict=restrict)
            cms.append(confusion(pred.labels, scan.labels[idx]))
            tuned += pred.source == "tuned"
    finally:
        model.train(was_training)
    summary = {**summarize_confusions(cms), "passes": int(passes)}
    if fallback is not None:
        summary["scans_to_tuned"] = tuned  # how many scans the gate gave the tuned weights
    return summary


# ---------------------------------------------------------------- training


class TextBar:
    """A one-line text progress bar on stderr (a ``progress`` callback)."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.t0 = time.monotonic()

    def __call__(self, fraction: float, stage: str) -> None:
        f = min(max(fraction, 0.0), 1.0)
        done = int(round(f * self.width))
        el = time.monotonic() - self.t0
        eta = el / f - el if f > 0 else 0.0
        self.stream.write(f"\r[{'#' * done}{'.' * (self.width - done)}] {100 * f:5.1f}% "
                          f"{stage[:60]:<60} {el / 60:5.1f} min, eta {eta / 60:5.1f} min")
        if f >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def state_dir_for(out: str | Path) -> Path:
    return Path(str(out) + ".state")


def _rng_state(rng: np.random.Generator) -> dict:
    return json.loads(json.dumps(rng.bit_generator.state))


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable training state atomically (a crash never leaves half a file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a state file, pickled code...
        raise CloseError(f"cannot read the training state {path} ({type(exc).__name__})",
                         "delete that folder to start over without --resume") from None


class WeightAverage:
    """Running mean of a model's floating-point state (weights and BatchNorm statistics)."""

    def __init__(self, state: dict[str, torch.Tensor] | None = None, count: int = 0) -> None:
        self.state = state
        self.count = count

    def update(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            current = model.state_dict()
            if self.state is None:
                self.state = {k: v.detach().clone() for k, v in current.items()}
            else:
                for k, v in current.items():
                    if v.is_floating_point():
                        self.state[k].add_(v.detach() - self.state[k], alpha=1 / (self.count + 1))
                    else:  # counters such as num_batches_tracked: the latest
                        self.state[k].copy_(v)
        self.count += 1

    def model_like(self, model: CloseNet) -> CloseNet:
        """A copy of ``model`` holding the averaged state (``model`` itself if none yet)."""
        if self.state is None:
            return model
        avg = CloseNet(model.config)
        avg.load_state_dict(self.state)
        avg.train(model.training)
        return avg


@dataclass
class TrainResult:
    model: CloseNet  # eval mode
    history: list[dict[str, Any]]
    val_metrics: dict[str, Any] | None
    state_dir: Path
    epochs_run: int


def _optimizer(model: CloseNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; the logit BatchNorm's scale and shift at ``head_lr_mult`` x the learning rate."""
    head = list(model.decoder.layers[-1].bn.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.Adam([{"params": rest, "lr_mult": 1.0},
                             {"params": head, "lr_mult": cfg.head_lr_mult}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    t = min(step / max(total, 1), 1.0)
    return cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train(model_cfg: CloseNetConfig, cfg: TrainConfig, train_scans: Sequence[Scan],
          val_scans: Sequence[Scan], state_dir: str | Path, *, resume: bool = False,
          init_state: dict[str, torch.Tensor] | None = None,
          progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume training) a CloseNet; returns the final model in eval mode.

    State is saved to ``state_dir/state.pt`` after every epoch; ``resume=True``
    continues from it (same data required; ``cfg.epochs`` may be raised).
    """
    if not train_scans:
        raise CloseError("no training scans", "give labelled CloSe-D .npz files or folders")
    if cfg.batch_size < 1 or cfg.n_points < 1 or cfg.epochs < 1:
        raise CloseError("batch size, points per sample and epochs must be at least 1")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    state_dir = Path(state_dir)
    state_path = state_dir / STATE_NAME
    fingerprint = data_fingerprint(train_scans)
    model = CloseNet(model_cfg)
    steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(train_scans) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    opt = _optimizer(model, cfg)
    history: list[dict[str, Any]] = []
    epoch0 = 0
    if resume:
        if not state_path.is_file():
            raise CloseError(f"nothing to resume: {state_path} does not exist",
                             "run without --resume to start a new training")
        st = load_state(state_path)
        if st.get("data") != fingerprint:
            raise CloseError("the training data differ from those of the run being resumed",
                             "resume with the same files, or start over without --resume")
        if CloseNetConfig.from_dict(json.loads(st["model_config"])) != model_cfg:
            raise CloseError("the model configuration differs from the run being resumed",
                             "resume with the same --config")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(st["np_rng"])
        torch.set_rng_state(st["torch_rng"])
        epoch0 = int(st["epoch"])
        history = json.loads(st["history"])
        average = WeightAverage(st.get("average"), int(st.get("average_count", 0)))
        if epoch0 >= cfg.epochs:
            _say(log, f"the saved state already has {epoch0} epochs (>= {cfg.epochs})")
    else:
        if state_path.exists():
            raise CloseError(f"a training state exists at {state_dir}",
                             "add --resume to continue it, or delete the folder to start over")
        torch.manual_seed(cfg.seed)
        model = CloseNet(model_cfg)  # initial weights from the seed
        if init_state is not None:
            model.load_state_dict(init_state)
        elif cfg.logit_scale_init:
            with torch.no_grad():
                model.decoder.layers[-1].bn.weight.fill_(cfg.logit_scale_init)
        opt = _optimizer(model, cfg)
        rng = np.random.default_rng(cfg.seed)
        average = WeightAverage()
    average_start = math.ceil(cfg.average_from * total_steps) if cfg.average_from > 0 else None
    model.train()
    weight = class_weights(train_scans, cfg.class_balance)
    val_metrics = history[-1].get("val") if history else None
    n_done = epoch0
    for epoch in range(epoch0, cfg.epochs):
        t0 = time.monotonic()
        order = rng.permutation(len(train_scans))
        losses = []
        for s in range(steps_per_epoch):
            if cancelled is not None and cancelled():
                raise Cancelled()
            step = epoch * steps_per_epoch + s
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total_steps, cfg) * group["lr_mult"]
            pick = [order[(s * cfg.batch_size + j) % len(order)] for j in range(cfg.batch_size)]
            batch = make_batch([train_scans[i] for i in pick], rng, cfg.n_points, cfg.augment,
                               cfg.extra_garments_prob)
            logits = model(batch["points"], batch["canon"], batch["garments"])
            if cfg.mask_absent:
                logits = mask_unlisted(logits, batch["garments"])
            balance = (scan_balanced_weights(batch["labels"], cfg.scan_balance)
                       if cfg.scan_balance > 0 else None)
            loss = weighted_cross_entropy(logits, batch["labels"], weight, balance)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average_start is not None and step >= average_start:
                average.update(model)
            losses.append(float(loss.detach()))
            if progress is not None:
                progress((step + 1) / total_steps,
                         f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses[-20:]):.4f}")
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
                                 "lr": opt.param_groups[0]["lr"],
                                 "seconds": round(time.monotonic() - t0, 2)}
        if average.count:
            entry["averaged_steps"] = average.count
        if val_scans:
            val_metrics = evaluate_scans(average.model_like(model), val_scans,
                                         cfg.val_max_points, seed=0, cancelled=cancelled)
            entry["val"] = {k: val_metrics[k] for k in ("miou_strict", "miou_reference",
                                                        "accuracy")}
        history.append(entry)
        _say(log, f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['loss']:.4f}"
             + (f", averaged over {average.count} steps" if average.count else "")
             + (f", val mIoU strict {entry['val']['miou_strict']:.4f} reference "
                f"{entry['val']['miou_reference']:.4f}" if "val" in entry else "")
             + f" ({entry['seconds']:.0f} s)")
        state_dir.mkdir(parents=True, exist_ok=True)
        save_state(state_path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
            "np_rng": json.dumps(_rng_state(rng)), "torch_rng": torch.get_rng_state(),
            "history": json.dumps(history), "data": fingerprint,
            "model_config": json.dumps(model_cfg.to_dict()),
            "train_config": json.dumps(cfg.to_dict()),
            **({"average": average.state, "average_count": average.count}
               if average.count else {}),
        })
        n_done = epoch + 1
    model = average.model_like(model)
    model.eval()
    return TrainResult(model, history, val_metrics, state_dir, n_done)


def _say(log: Callable[[str], None] | None, text: str) -> None:
    if log is not None:
        log(text)


# ---------------------------------------------------------------- the command


def train_command(data: Sequence[str | Path], out: str | Path, *, config_path: str | None = None,
                  init: str | None = None, val: Sequence[str | Path] = (),
                  test: Sequence[str | Path] = (), overrides: dict[str, Any] | None = None,
                  augment: bool = True, resume: bool = False, dropout: float | None = None,
                  progress: Progress | None = None,
                  cancelled: Callable[[], bool] | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load data, train, score the held-out set and write the native checkpoint ``out``.

    Returns ``{"sha256", "metrics", "history"}``. Nothing is written to ``out`` unless
    training finishes; ``out`` is never overwritten. ``dropout`` replaces the decoder's
    dropout rate while training; it has no weights, so the checkpoint keeps the
    architecture's config (and fits ``--init`` and ``--config`` as before) and records the
    rate used in ``training.dropout``.
    """
    from inference.checkpoints import load_checkpoint, save_native

    out = Path(out)
    if out.exists():
        raise CloseError(f"{out} exists and checkpoints are never overwritten",
                         "choose a new output name")
    init_ckpt = load_checkpoint(init) if init else None
    if config_path:
        model_cfg, cfg = load_config_file(config_path)
    else:
        model_cfg, cfg = (init_ckpt.config if init_ckpt else CloseNetConfig()), TrainConfig()
    if init_ckpt is not None and init_ckpt.config != model_cfg:
        raise CloseError("the --init checkpoint's architecture differs from the --config one",
                         "drop --config to train with the checkpoint's architecture")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise CloseError(f"dropout {dropout} is outside [0, 1)", "give e.g. --dropout 0.2")
    run_cfg = model_cfg if dropout is None else dataclasses.replace(model_cfg, dropout=float(dropout))
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    if not augment:
        cfg.augment = AugmentConfig(rotate_y=False, axis_scale=0, shrink=0, brightness=0,
                                    contrast=0, channel_gain=0, color_noise=0,
                                    color_dropout=0, position_noise=0, density=0)
    train_scans = load_scans(data)
    val_scans = load_scans(val) if val else []
    test_scans = load_scans(test) if test else []
    names = {s.name for s in train_scans}
    overlap = names & {s.name for s in (*val_scans, *test_scans)}
    if overlap:
        _say(log, f"warning: {len(overlap)} held-out file name(s) also in the training data")
    result = train(run_cfg, cfg, train_scans, val_scans, state_dir_for(out), resume=resume,
                   init_state=init_ckpt.model.state_dict() if init_ckpt else None,
                   progress=progress, cancelled=cancelled, log=log)
    metrics: dict[str, Any] = {}
    if result.val_metrics is not None:
        metrics["val"] = result.val_metrics
    if test_scans:
        _say(log, f"scoring {len(test_scans)} held-out scans (all points)")
        metrics["test"] = evaluate_scans(result.model, test_scans, 0, seed=0,
                                         cancelled=cancelled)
        if PASSES > 1:  # also as Segment, predict and evaluate run it by default
            metrics["test_default_passes"] = evaluate_scans(
                result.model, test_scans, 0, seed=0, passes=PASSES, cancelled=cancelled)
    meta = {
        "provenance": {
            "source": "trained" if init_ckpt is None else "trained-from-init",
            "parent_sha256": init_ckpt.sha256 if init_ckpt else None,
            "training_data": {"n_scans": len(train_scans),
                              "n_points": int(sum(len(s) for s in train_scans)),
                              "fingerprint": data_fingerprint(train_scans),
                              "files": sorted(names),
                              "val_files": sorted(s.name for s in val_scans),
                              "test_files": sorted(s.name for s in test_scans)},
            "metrics": metrics,
        },
        "training": {"train_config": cfg.to_dict(), "history": result.history,
                     "epochs": result.epochs_run, "dropout": run_cfg.dropout,
                     "torch": torch.__version__},
    }
    if cancelled is not None and cancelled():
        raise Cancelled()
    sha = save_native(out, result.model, model_cfg, meta)
    return {"sha256": sha, "metrics": metrics, "history": result.history}
