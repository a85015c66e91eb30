"""Fine-tuning a CloSe-Net checkpoint on an artist's corrections, without forgetting.

A correction is a CloSe-D ``.npz`` with the corrected ``labels`` and, optionally,
``changed`` (N,) bool: the vertices the artist changed. One round:

1. The new corrections are those whose file hash is not in the parent's lineage
   (``finetune.corrections_seen`` in its metadata); the others are *earlier*
   corrections and are replayed. A sample of the kind of data the base model
   was trained on (synthetic scans, fixed seeds) is split into a replay-train
   half and a fixed replay-eval half.
2. A pool of 2048-point chunks is cut once from every scan (each point in one
   chunk per pass, mild augmentation). ``layers="colour"`` (the default) trains a
   ``ColourMix``, a 3x3 colour matrix and offset in front of the first layer, folded
   into its weights after the round: a studio's colour look in twelve numbers. With the
   encoders frozen (``"head"``, ``"decoder"``) the network up to the decoder runs once per
   chunk and its output is cached, so the steps only run the decoder. ``"colour"``,
   ``"all"`` and ``"input"`` (the first layer's weights) run the whole network per step.
   BatchNorm statistics stay frozen in every layer (a handful of scans would otherwise
   shift them for all data); dropout stays on in the trained part.
3. Loss per step (half new-correction chunks, a quarter earlier corrections, a
   quarter replay): cross-entropy with ``changed_weight`` on changed vertices,
   plus ``distill`` x the KL divergence from the starting model's predictions on
   the replay and earlier-correction chunks, plus ``pull`` x sum of squared (L2)
   or absolute (L1) differences of the trained weights from their starting values.
4. Before/after evaluation on held-out corrections and on the replay-eval set;
   a round whose replay strict mIoU drops by more than ``flag_threshold`` is
   flagged and not activated. A *gated* version (``gate``, the default) is scored as
   it predicts: each scan by whichever of its tuned and starting weights is more
   confident on it.
5. The result is written as ``<out_dir>/<name>-vNNN.safetensors`` (next free
   number, never overwriting) with the parent hash, the data used and the metrics,
   and for a gated version the starting weights of the tensors that changed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from close_blender.errors import Cancelled, CloseError, ScanError
from close_blender.fileio import write_bytes_atomic
from close_blender.model_versions import file_sha256
from close_blender.scan_io import load_scan, scan_paths
from inference.closenet import CloseNet
from inference.training import (
    AugmentConfig,
    Progress,
    Scan,
    augment_sample,
    evaluate_scans,
    mask_unlisted,
    scan_from_arrays,
)

LAYER_CHOICES = ("decoder", "head", "all", "input", "colour")
REPLAY_SEED = 4000  # synthetic replay scans: seeds never used for training the default model
# 32 scans: the odd half is the replay evaluation set. With 3 and then 8 evaluation scans
# the guard disagreed with the 24 held-out scans by up to 5 points (docs/training.md).
REPLAY_COUNT = 32
REPLAY_POINTS = 20000


@dataclass
class FinetuneConfig:
    # colour (a 3x3 colour mix and offset in front of the first layer, folded into it) |
    # head (last two decoder layers) | decoder | all | input (first EdgeConv layer, the only
    # weights that take the colours in), or two joined by '+'. colour, gated: +13.7 on a
    # studio's colour look with nothing lost, and nothing measurable lost or gained on a
    # garment style, where no choice gained (docs/training.md)
    layers: str = "colour"
    steps: int = 40
    chunks_per_step: int = 4
    n_points: int = 2048
    lr: float = 3e-4
    colour_lr: float = 1e-2  # the ColourMix's twelve numbers (layers ``colour``)
    changed_weight: float = 3.0  # loss weight of vertices the artist changed
    pull: str = "l2"  # l2 | l1: pull towards the starting weights
    pull_strength: float = 1e-2
    new_passes: int = 1  # chunk passes cut from each new correction
    replay_passes: int = 1  # chunk passes cut from each replay / earlier correction
    # Train on replay chunks too (None: yes, except in a gated round that trains only the
    # colour mix: the gate keeps the original look, and fitting one mix to both looks pulls
    # it back to the original; bgr style +13.3 without, +7.6 with, docs/training.md).
    train_on_replay: bool | None = None
    max_replay_chunks: int = 8
    flag_threshold: float = 0.01  # replay strict mIoU may drop at most this much
    # Weight of a distillation term on replay and earlier-correction chunks: the KL divergence
    # from the starting model's predictions (learning without forgetting), a denser guard
    # than their labels alone.
    distill: float = 1.0
    mask_absent: bool = True  # cross-entropy over the scan's garments only, as in training
    # Gated version: keep the starting weights beside the tuned ones (only the tensors that
    # changed) and label each scan with whichever is more confident on it, so a version
    # tuned to one studio's look does not unlearn the others (docs/training.md). A round
    # from a gated version keeps its fallback: the gate always falls back to the weights
    # before the first gated round.
    gate: bool = True
    eval_max_points: int = 4096
    seed: int = 0
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        axis_scale=0.04, shrink=0.04, brightness=0.08, contrast=0.08, channel_gain=0.03,
        color_noise=0.01, color_dropout=0.0, position_noise=0.001, density=0.0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- data


def correction_from_arrays(arrays: dict[str, np.ndarray], name: str,
                           changed_weight: float) -> Scan:
    """A training :class:`Scan` with per-vertex weights from ``changed`` (if present)."""
    scan = scan_from_arrays(arrays, name)
    if "changed" in arrays:
        changed = np.asarray(arrays["changed"])
        if changed.shape != (len(scan),):
            raise ScanError(f"{name}: 'changed' has shape {changed.shape}, expected "
                            f"({len(scan)},)", "it flags the vertices the artist changed")
        scan.weights = np.where(changed.astype(bool), changed_weight, 1.0).astype(np.float32)
    return scan


def load_corrections(paths: Sequence[str | Path], changed_weight: float
                     ) -> list[tuple[Scan, str]]:
    """(scan, file sha256) for every correction file."""
    out = []
    for f in scan_paths(paths):
        arrays = load_scan(f, require=("points",))
        out.append((correction_from_arrays(arrays, f.name, changed_weight), file_sha256(f)))
    return out


def replay_scans(folder: str | Path, progress: Progress | None = None) -> list[Scan]:
    """The fixed replay set in ``folder``; made once with the synthetic generator
    (seed ``REPLAY_SEED``, the kind of data the default model was trained on)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    ours = all(f.stem.startswith(f"replay_{REPLAY_SEED}_") for f in files)
    if len(files) < REPLAY_COUNT and ours:  # made here (or by an older, smaller version)
        from inference.synth import generate_scan, write_scan

        for i in range(REPLAY_COUNT):
            if progress is not None:
                progress(i / REPLAY_COUNT, "making the replay set (once)")
            stem = f"replay_{REPLAY_SEED}_{i:04d}"
            if not (folder / f"{stem}.npz").exists():
                write_scan(folder, stem, generate_scan(REPLAY_SEED, REPLAY_POINTS, index=i),
                           "none")
        files = sorted(folder.glob("*.npz"))
    return [scan_from_arrays(load_scan(f, require=("points",)), f.name) for f in files]


# ---------------------------------------------------------------- chunk pool


@dataclass
class Chunk:
    inputs: tuple[torch.Tensor, ...]  # cached network inputs (depth depends on the layers)
    labels: torch.Tensor  # (n,)
    weights: torch.Tensor  # (n,)
    garments: torch.Tensor  # (C,) the scan's garments vector
    teacher: torch.Tensor | None = None  # (C, n) the starting model's log-probabilities


def _chunk_indices(n: int, n_points: int, passes: int, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    """Random chunks covering every point once per pass (topped up to n_points)."""
    out = []
    for _ in range(passes):
        perm = rng.permutation(n)
        for s in range(0, n, n_points):
            idx = perm[s:s + n_points]
            if len(idx) < n_points:
                if len(idx) < n_points // 4 and out:
                    continue  # a tiny leftover: its points are in the next pass anyway
                idx = np.concatenate([idx, rng.choice(n, n_points - len(idx), replace=n < n_points)])
            out.append(idx)
    return out


def decoder_input(model: CloseNet, points: torch.Tensor, canon: torch.Tensor,
                  garments: torch.Tensor) -> torch.Tensor:
    """The decoder's input (B, C, N): point features, body coordinates, garment features."""
    feats, x3 = model.point_encoder(points)
    garm = model.garment_encoder(x3, garments)
    return torch.cat([feats, canon.transpose(1, 2), garm], dim=1)


def build_pool(model: CloseNet, scans: Sequence[Scan], passes: int, cfg: FinetuneConfig,
               rng: np.random.Generator, cache: bool, max_chunks: int = 0,
               cancelled: Callable[[], bool] | None = None, teacher: bool = False
               ) -> list[Chunk]:
    """Cut and augment chunks; with ``cache`` run the frozen encoders once per chunk; with
    ``teacher`` keep the model's own (dropout-free) log-probabilities for distillation."""
    pool: list[Chunk] = []
    jobs = [(s, idx) for s in scans for idx in _chunk_indices(len(s), cfg.n_points, passes, rng)]
    if max_chunks and len(jobs) > max_chunks:
        jobs = [jobs[i] for i in sorted(rng.choice(len(jobs), max_chunks, replace=False))]
    for scan, idx in jobs:
        if cancelled is not None and cancelled():
            raise Cancelled()
        pts, canon = augment_sample(scan, idx, rng, cfg.augment)
        p = torch.from_numpy(pts)[None]
        c = torch.from_numpy(np.ascontiguousarray(canon))[None]
        g = torch.from_numpy(scan.garments)[None]
        if cache:
            with torch.inference_mode():
                inputs: tuple[torch.Tensor, ...] = (decoder_input(model, p, c, g).clone(),)
        else:
            inputs = (p, c, g)
        w = (np.ones(len(idx), np.float32) if scan.weights is None else scan.weights[idx])
        chunk = Chunk(inputs, torch.from_numpy(scan.labels[idx]), torch.from_numpy(w), g[0])
        if teacher:
            chunk.teacher = _teacher_log_probs(model, chunk, cache, cfg.mask_absent)
        pool.append(chunk)
    return pool


def _teacher_log_probs(model: CloseNet, chunk: Chunk, cached: bool, mask: bool
                       ) -> torch.Tensor:
    """(C, n) log-probabilities of the model as it is now, dropout off."""
    dropout = model.decoder.dropout
    was_training = dropout.training
    dropout.eval()
    try:
        with torch.inference_mode():
            logits = _forward(model, [chunk], cached)
            if mask:
                logits = mask_unlisted(logits, chunk.garments[None])
            return F.log_softmax(logits, dim=1)[0].clone()
    finally:
        dropout.train(was_training)


# ---------------------------------------------------------------- training


class ColourMix(torch.nn.Module):
    """A 3x3 colour matrix and offset in front of the first EdgeConv's weights (``colour``).

    Twelve numbers that re-map a scanner's or a pipeline's colour look (a channel order,
    a tint, a gain) for every weight at once, where ``input`` fits 1,152 weights to one
    scan's chunks. It mixes the colour channels of the edge features, after the k-NN
    graph is built, so ``fold`` can write it into the first conv's weights and its
    BatchNorm's running mean exactly: the result is the same architecture.
    """

    def __init__(self, model: CloseNet) -> None:
        super().__init__()
        self.block = model.point_encoder.edge_convs[0].layers[0]
        self.in_dim = self.block.conv.in_channels // 2  # edge features: (x_j - x_i, x_i)
        like = {"device": self.block.conv.weight.device, "dtype": self.block.conv.weight.dtype}
        self.matrix = torch.nn.Parameter(torch.eye(3, **like))
        self.offset = torch.nn.Parameter(torch.zeros(3, **like))
        self._hook = self.block.conv.register_forward_pre_hook(self._mix)

    def _columns(self) -> tuple[slice, slice]:
        return slice(3, 6), slice(self.in_dim + 3, self.in_dim + 6)  # colours: x[3:6]

    def _mix(self, _module: torch.nn.Module, args: tuple[torch.Tensor, ...]
             ) -> tuple[torch.Tensor, ...]:
        h = args[0]
        diff, centre = self._columns()
        mix = lambda x: torch.einsum("oc,bcnk->bonk", self.matrix, x)  # noqa: E731
        return (torch.cat([h[:, :diff.start], mix(h[:, diff]), h[:, diff.stop:centre.start],
                           mix(h[:, centre]) + self.offset.view(1, 3, 1, 1),
                           h[:, centre.stop:]], dim=1),)

    @torch.no_grad()
    def fold(self) -> None:
        """Write the mix into the conv weights and the BN mean; remove the hook."""
        self._hook.remove()
        w = self.block.conv.weight  # (out, 2 * in_dim, 1, 1)
        diff, centre = self._columns()
        shift = w[:, centre, 0, 0] @ self.offset  # W_c (M c + b) = (W_c M) c + W_c b
        w[:, diff, 0, 0] = w[:, diff, 0, 0] @ self.matrix
        w[:, centre, 0, 0] = w[:, centre, 0, 0] @ self.matrix
        self.block.bn.running_mean -= shift

    def remove(self) -> None:
        self._hook.remove()


def layer_parts(layers: str) -> list[str]:
    """The parts of a layer choice (``head``, ``colour+head``, ...), checked."""
    parts = layers.split("+")
    for part in parts:
        if part not in LAYER_CHOICES:
            raise CloseError(f"unknown layer choice {layers!r}",
                             f"use one of {LAYER_CHOICES}, or two joined by '+'")
    return parts


def trainable_parameters(model: CloseNet, layers: str) -> list[torch.nn.Parameter]:
    """Mark the chosen layers trainable (all others frozen) and return their parameters
    (``colour``'s ColourMix is made by ``tune``, not here)."""
    modules = {"all": lambda: [model], "decoder": lambda: [model.decoder],
               "input": lambda: [model.point_encoder.edge_convs[0].layers[0].conv],
               "colour": lambda: [], "head": lambda: list(model.decoder.layers[-2:])}
    mods = [m for part in layer_parts(layers) for m in modules[part]()]
    for p in model.parameters():
        p.requires_grad_(False)
    params = list({id(p): p for m in mods for p in m.parameters()}.values())
    for p in params:
        p.requires_grad_(True)
    return params


def _set_modes(model: CloseNet) -> None:
    """Eval everywhere (frozen BN statistics), dropout active in the decoder."""
    model.eval()
    model.decoder.dropout.train()


def _forward(model: CloseNet, chunks: Sequence[Chunk], cached: bool) -> torch.Tensor:
    if cached:
        x = torch.cat([c.inputs[0] for c in chunks])
        return model.decoder(x)
    p, c, g = (torch.cat([ch.inputs[i] for ch in chunks]) for i in range(3))
    return model(p, c, g)


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (ce * weights).sum() / weights.sum().clamp_min(1e-12)


def distillation(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean per-point KL(teacher || model) of (B, C, n) logits and teacher log-probabilities."""
    log_p = F.log_softmax(logits, dim=1)
    return (teacher.exp() * (teacher - log_p)).sum(1).mean()


def pull_loss(params: Sequence[torch.Tensor], start: Sequence[torch.Tensor], kind: str
              ) -> torch.Tensor:
    if kind == "l2":
        return sum(((p - s) ** 2).sum() for p, s in zip(params, start, strict=True))
    if kind == "l1":
        return sum((p - s).abs().sum() for p, s in zip(params, start, strict=True))
    raise CloseError(f"unknown pull {kind!r}", "use l2 or l1")


def tune(model: CloseNet, new: Sequence[Scan], earlier: Sequence[Scan], replay: Sequence[Scan],
         cfg: FinetuneConfig, progress: Progress | None = None,
         cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` in place; returns timing and loss figures."""
    if not new:
        raise CloseError("no new corrections to learn from",
                         "correct a scan's labels and save it into the corrections folder")
    t0 = time.monotonic()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = trainable_parameters(model, cfg.layers)
    groups = [{"params": params, "lr": cfg.lr}] if params else []
    colour = ColourMix(model) if "colour" in layer_parts(cfg.layers) else None
    if colour is not None:
        groups.append({"params": list(colour.parameters()), "lr": cfg.colour_lr})
        params = params + groups[-1]["params"]
    start = [p.detach().clone() for p in params]
    # when only decoder weights train, the network before the decoder is fixed: its
    # output is computed once per chunk (derived from the choice, not a list of names)
    in_decoder = {id(p) for p in model.decoder.parameters()}
    cached = colour is None and all(id(p) in in_decoder for p in params)
    try:
        figures = _train(model, groups, params, start, cached, new, earlier, replay, cfg, rng, t0,
                         progress, cancelled)
    except BaseException:
        if colour is not None:
            colour.remove()
        raise
    if colour is not None:
        colour.fold()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return figures


def _train(model: CloseNet, groups: list[dict[str, Any]], params: list[torch.nn.Parameter],
           start: list[torch.Tensor],
           cached: bool, new: Sequence[Scan], earlier: Sequence[Scan], replay: Sequence[Scan],
           cfg: FinetuneConfig, rng: np.random.Generator, t0: float,
           progress: Progress | None, cancelled: Callable[[], bool] | None) -> dict[str, Any]:
    """The steps of ``tune``: pools, then Adam on ``params``."""
    _set_modes(model)
    report = (lambda f, s: progress(f, s)) if progress else (lambda f, s: None)
    report(0.0, "cutting chunks")
    pool_new = build_pool(model, new, cfg.new_passes, cfg, rng, cached, cancelled=cancelled)
    distill = cfg.distill > 0
    pool_old = build_pool(model, earlier, cfg.replay_passes, cfg, rng, cached,
                          cfg.max_replay_chunks, cancelled, teacher=distill)
    if cfg.train_on_replay is False:
        replay = []
    pool_rep = build_pool(model, replay, cfg.replay_passes, cfg, rng, cached,
                          cfg.max_replay_chunks, cancelled, teacher=distill)
    t_pool = time.monotonic() - t0
    opt = torch.optim.Adam(groups)
    n_new = max(1, cfg.chunks_per_step // 2)
    n_rest = max(0, cfg.chunks_per_step - n_new)
    losses = []
    for step in range(cfg.steps):
        if cancelled is not None and cancelled():
            raise Cancelled()
        picks = [pool_new[i] for i in rng.choice(len(pool_new), n_new, replace=True)]
        for j in range(n_rest):
            src = (pool_old if pool_old and (j % 2 == 0 or not pool_rep) else pool_rep) \
                or pool_new
            picks.append(src[int(rng.integers(len(src)))])
        logits = _forward(model, picks, cached)
        if cfg.mask_absent:
            logits = mask_unlisted(logits, torch.stack([c.garments for c in picks]))
        labels = torch.stack([c.labels for c in picks])
        weights = torch.stack([c.weights for c in picks])
        loss = weighted_ce(logits, labels, weights)
        guarded = [i for i, c in enumerate(picks) if c.teacher is not None]
        if guarded:  # teachers exist only with distillation on
            loss = loss + cfg.distill * distillation(
                logits[guarded], torch.stack([picks[i].teacher for i in guarded]))
        if cfg.pull_strength > 0:
            loss = loss + cfg.pull_strength * pull_loss(params, start, cfg.pull)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        report((step + 1) / cfg.steps, f"fine-tuning step {step + 1}/{cfg.steps}")
    return {"seconds_pool": round(t_pool, 2), "seconds_train": round(time.monotonic() - t0 - t_pool, 2),
            "chunks": {"new": len(pool_new), "earlier": len(pool_old), "replay": len(pool_rep)},
            "loss_first": float(np.mean(losses[:5])), "loss_last": float(np.mean(losses[-5:])),
            "n_trainable": int(sum(p.numel() for p in params))}


def reference_tune(model: CloseNet, scan: Scan, passes: int = 3, lr: float = 1e-4,
                   reg: float = 10.0, seed: int = 0) -> float:
    """The reference tool's (CloSe-T) recipe, for comparison: Adam ``lr``, ``passes`` over the
    scan in random 2048-point chunks, cross-entropy + ``reg`` x mean |w - w0|, training the
    decoder, the global 1x1 conv and the last EdgeConv (those in train mode: dropout, BN
    statistics). Returns seconds."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    mods = [model.decoder, model.point_encoder.global_conv, model.point_encoder.edge_convs[2]]
    params = [p for m in mods for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    start = [p.detach().clone() for p in params]
    n_el = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()  # the T-Net's BN cannot train on one cloud; the trained modules do train
    for m in mods:
        m.train()
    feats = np.concatenate([scan.points, scan.colors, scan.normals], axis=1).astype(np.float32)
    g = torch.from_numpy(scan.garments)[None]
    for _ in range(passes):
        perm = rng.permutation(len(scan))
        for s in range(0, len(scan), 2048):
            idx = perm[s:s + 2048]
            logits = model(torch.from_numpy(feats[idx])[None],
                           torch.from_numpy(scan.canon[idx])[None], g)
            loss = F.cross_entropy(logits, torch.from_numpy(scan.labels[idx])[None])
            loss = loss + reg * sum((p - s0).abs().sum() for p, s0 in zip(params, start,
                                                                          strict=True)) / n_el
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return time.monotonic() - t0


# ---------------------------------------------------------------- versions


_VERSION = re.compile(r"^(?P<name>.+)-v(?P<n>\d{3,})\.safetensors$")


def next_version_path(out_dir: str | Path, name: str) -> Path:
    """``<out_dir>/<name>-vNNN.safetensors`` with NNN one above the highest present."""
    out = Path(out_dir)
    highest = 0
    if out.is_dir():
        for p in out.iterdir():
            m = _VERSION.match(p.name)
            if m and m.group("name") == name:
                highest = max(highest, int(m.group("n")))
    return out / f"{name}-v{highest + 1:03d}.safetensors"


def _short(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    keys = ("miou_strict", "miou_reference", "accuracy", "per_class_iou", "n_scans", "n_points",
            "scans_to_tuned")
    return {k: m[k] for k in keys if k in m}


SCORE_CACHE = "replay-scores.json"  # in the versions folder, beside the versions
SCORE_CACHE_SIZE = 64


def _scans_digest(scans: Sequence[Scan]) -> str:
    """A hash of the scans' contents (what a score of them depends on)."""
    h = hashlib.sha256()
    for s in scans:
        for a in (s.points, s.colors, s.normals, s.canon, s.labels, s.garments):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _replay_key(model_sha: str, scans_digest: str, max_points: int) -> str:
    """Which model scored which replay scans at which subset size."""
    return hashlib.sha256(f"{model_sha}:{scans_digest}:{max_points}".encode()).hexdigest()


def _cached_scores(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / SCORE_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or damaged: scoring again is always safe
    return data if isinstance(data, dict) else {}


def _store_score(out_dir: Path, key: str, metrics: dict[str, Any]) -> None:
    """Remember a version's replay score: the next round from it starts with it."""
    data = _cached_scores(out_dir)
    data.pop(key, None)
    data[key] = metrics
    data = dict(list(data.items())[-SCORE_CACHE_SIZE:])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out_dir / SCORE_CACHE, json.dumps(data).encode())
    except OSError:
        pass  # a cache: a read-only folder only costs the next round a few seconds


@dataclass
class FinetuneResult:
    path: Path
    sha256: str
    flagged: bool
    flag_reason: str
    metrics: dict[str, Any]
    timing: dict[str, Any]


def finetune(checkpoint: str | Path, corrections: Sequence[str | Path], out_dir: str | Path, *,
             name: str = "finetuned", heldout: Sequence[str | Path] = (),
             replay: str | Path | None = None, cfg: FinetuneConfig | None = None,
             progress: Progress | None = None, cancelled: Callable[[], bool] | None = None
             ) -> FinetuneResult:
    """One fine-tuning round from ``checkpoint`` (.pth, .safetensors or a project name) on the
    corrections; writes a new version in ``out_dir``. ``replay`` is the folder of the fixed
    replay set (default ``<out_dir>/replay``, made once)."""
    from inference.checkpoints import load_checkpoint, save_native

    cfg = cfg or FinetuneConfig()
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    parent = load_checkpoint(checkpoint)
    model = parent.model
    fallback = parent.fallback
    if fallback is None and cfg.gate:
        fallback = copy.deepcopy(model)  # before ``tune`` changes ``model`` in place
    if not cfg.gate:
        fallback = None
    if cfg.train_on_replay is None:
        cfg = dataclasses.replace(cfg, train_on_replay=not (
            fallback is not None and layer_parts(cfg.layers) == ["colour"]))
    seen = set((parent.meta.get("finetune") or {}).get("corrections_seen") or [])
    loaded = load_corrections(corrections, cfg.changed_weight)
    new = [(s, h) for s, h in loaded if h not in seen]
    earlier = [(s, h) for s, h in loaded if h in seen]
    if not new:
        raise CloseError("every correction in the folder was already used by this checkpoint",
                         "correct another scan, or fine-tune from an earlier version")
    held = [s for s, _ in load_corrections(heldout, cfg.changed_weight)] if heldout else []
    rep = replay_scans(replay if replay is not None else out_dir / "replay", progress)
    rep_train, rep_eval = rep[0::2], rep[1::2]

    def score(tag: str, gate: CloseNet | None,
              replay_known: dict[str, Any] | None = None) -> dict[str, Any]:
        if progress is not None:
            progress(0.0, f"evaluating ({tag})")
        out = {"replay": replay_known or _short(evaluate_scans(
            model, rep_eval, cfg.eval_max_points, fallback=gate, cancelled=cancelled))}
        out["heldout"] = _short(evaluate_scans(model, held, cfg.eval_max_points, fallback=gate,
                                               cancelled=cancelled)) if held else None
        return out

    # the parent's replay score is known when a round from it (or the one that made it)
    # already scored it: scoring is deterministic, so the stored figures are the same
    rep_digest = _scans_digest(rep_eval)
    parent_key = _replay_key(parent.sha256, rep_digest, cfg.eval_max_points)
    known = _cached_scores(out_dir).get(parent_key)
    before = score("before", parent.fallback, known)
    if known is None:
        _store_score(out_dir, parent_key, before["replay"])
    t_eval = time.monotonic() - t0
    timing = tune(model, [s for s, _ in new], [s for s, _ in earlier], rep_train, cfg,
                  progress, cancelled)
    after = score("after", fallback)
    drop = before["replay"]["miou_strict"] - after["replay"]["miou_strict"]
    flagged = bool(drop > cfg.flag_threshold)
    reason = (f"replay strict mIoU fell by {100 * drop:.1f} points (more than "
              f"{100 * cfg.flag_threshold:.1f})") if flagged else ""
    metrics = {"before": before, "after": after, "replay_drop": drop, "flagged": flagged}
    data = {
        "corrections": [{"file": s.name, "sha256": h, "n_points": len(s),
                         "n_changed": int((s.weights > 1).sum()) if s.weights is not None
                         else None} for s, h in new],
        "earlier_corrections": [{"file": s.name, "sha256": h} for s, h in earlier],
        "heldout": [s.name for s in held],
        "replay_train": [s.name for s in rep_train], "replay_eval": [s.name for s in rep_eval],
    }
    if cancelled is not None and cancelled():
        raise Cancelled()
    timing["seconds_total"] = round(time.monotonic() - t0, 2)
    timing["seconds_eval_before"] = round(t_eval, 2)
    timing["replay_before_cached"] = known is not None
    meta = {
        "provenance": {"source": "finetune", "parent_sha256": parent.sha256,
                       "training_data": data, "metrics": metrics},
        "finetune": {"parent_sha256": parent.sha256, "parent_path": str(parent.path),
                     "flagged": flagged, "flag_reason": reason, "config": cfg.to_dict(),
                     "gated": fallback is not None,
                     "timing": timing,
                     "corrections_seen": sorted(seen | {h for _, h in loaded})},
    }
    for _ in range(100):  # a concurrent run may take a number: try the next one
        path = next_version_path(out_dir, name)
        try:
            sha = save_native(path, model, parent.config, meta, fallback=fallback)
            break
        except CloseError:
            if not path.exists():
                raise
    else:
        raise CloseError(f"cannot find a free version number in {out_dir}")
    _store_score(out_dir, _replay_key(sha, rep_digest, cfg.eval_max_points), after["replay"])
    return FinetuneResult(path, sha, flagged, reason, metrics, timing)

