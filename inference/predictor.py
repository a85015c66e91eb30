"""Whole-scan prediction: every point of a scan through CloSe-Net, in random chunks.

As in the reference, the points are shuffled and cut into chunks of
``chunk_size`` (default 2048; the last one smaller, down to a single point,
where the network uses k = min(k, N)); every point is in exactly one chunk per
pass, and each chunk is a random subset of the whole scan, never a spatial tile,
because the weights learned the neighbourhood scale of such subsets. Several
passes (independent permutations) average the probabilities. The fast eval
path (:mod:`inference.fused`) computes the same logits as the plain network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from close_blender.errors import Cancelled, ScanError
from close_blender.labels import CLASS_NAMES
from close_blender.scan_io import colors_to_unit
from inference.closenet import CloseNet
from inference.devices import configure_threads, pick_device
from inference.fused import FusedCloseNet

Progress = Callable[[float, str], None]
ORDERS = ("shuffled", "sequential")


@dataclass
class Prediction:
    """Per-point results. For ``passes > 1``, ``logits`` is the log of the averaged
    probabilities (so softmax(logits) == probabilities and argmax is the label)."""

    logits: np.ndarray  # (N, C) float32
    probabilities: np.ndarray  # (N, C) float32
    labels: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float32, max probability
    entropy: np.ndarray  # (N,) float32, natural log
    source: str = ""  # a gated version's choice: "tuned" or "fallback" ("" otherwise)

    def restricted(self, garments: Any) -> tuple[Prediction, int]:
        """Labels limited to the classes set in ``garments``: (prediction, points changed).

        CloSe-Net's garment vector conditions the network but does not forbid other
        classes, so a few points may still get a class the scan does not list; they
        take the most probable listed class instead, with its (lower) probability as
        the confidence, which keeps them visible as uncertain. Logits, probabilities
        and entropy stay the network's.
        """
        allowed = np.asarray(garments).astype(bool).reshape(-1)
        outside = ~allowed[self.labels]
        if not outside.any():
            return self, 0
        masked = np.where(allowed[None, :], self.probabilities[outside], -1.0)
        labels, confidence = self.labels.copy(), self.confidence.copy()
        labels[outside] = masked.argmax(axis=1)
        confidence[outside] = masked.max(axis=1)
        return replace(self, labels=labels, confidence=confidence), int(outside.sum())


def _points_array(name: str, value: Any, n: int | None) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 2 or a.shape[1] != 3 or (n is not None and a.shape[0] != n):
        want = "(N, 3)" if n is None else f"({n}, 3)"
        raise ScanError(f"'{name}' has shape {a.shape}, expected {want}")
    if not np.issubdtype(a.dtype, np.number):
        raise ScanError(f"'{name}' must be numeric, not {a.dtype}")
    a = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise ScanError(f"'{name}' holds NaN or inf in {int(bad.sum())} of {len(a)} points",
                        "repair or remove those vertices first")
    return a


def check_garments(garments: Any, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """(n_classes,) 0/1 float vector with at least one class set, or a clear ScanError."""
    g = np.asarray(garments)
    if g.reshape(-1).shape != (n_classes,):
        raise ScanError(f"'garments' has shape {g.shape}, expected ({n_classes},)")
    g = g.reshape(-1).astype(np.float64)
    if not np.isfinite(g).all() or not np.isin(g, (0.0, 1.0)).all():
        raise ScanError("'garments' must hold only 0 and 1")
    if not g.any():
        raise ScanError(
            "no garment class is set (all-zero garments vector): the garment attention "
            "would have nothing to attend to",
            "set at least one of: " + ", ".join(CLASS_NAMES[:n_classes]))
    return g.astype(np.float32)


def chunk_orders(n: int, passes: int = 1, order: str = "shuffled",
                 seed: int = 0) -> list[np.ndarray]:
    """One ordering of all N points per pass: a seeded random permutation, or 0..N-1."""
    if order == "sequential":
        return [np.arange(n) for _ in range(passes)]
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(passes)]


class Predictor:
    """Runs a CloSe-Net over whole scans with the fast eval path.

    ``max_batch_chunks`` chunks go through one forward (default 2 on CPU, 16 on a
    GPU). On CPU, ``workers`` forwards (default: one per torch thread) run at
    once on separate batches, each single-threaded; torch's thread count is
    restored afterwards.
    """

    def __init__(self, model: CloseNet, device: str = "auto", chunk_size: int = 2048,
                 max_batch_chunks: int | None = None, workers: int | None = None) -> None:
        if int(chunk_size) < 1:
            raise ScanError(f"chunk size must be at least 1, got {chunk_size}")
        self.device = pick_device(device)
        if self.device.type == "cpu":
            configure_threads()
        self.config = model.config
        self.chunk_size = int(chunk_size)
        if max_batch_chunks is None:
            # CPU: per-cloud work is tiled anyway; two chunks batch the decoder GEMMs
            # and keep the worker threads balanced. GPU: enough chunks per forward
            # to fill the device, memory still bounded.
            max_batch_chunks = 2 if self.device.type == "cpu" else 16
        self.max_batch_chunks = max(1, int(max_batch_chunks))
        self.fast = FusedCloseNet(model).to(self.device)
        if self.device.type == "cpu":
            # One single-threaded forward per core, on different batches: no
            # barriers between the many mid-sized ops, robust to background load.
            self.workers = max(1, torch.get_num_threads()) if workers is None else int(workers)
        else:
            self.workers = 1
            self.fast.tile = 4096  # whole chunks at once: no cache to fit

    def _run_parallel(self, batches, forward, collect, check_cancel) -> None:
        """Run batches on worker threads (1 intra-op thread each), collect in order."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        pending: deque = deque()
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="closenet") as pool:
                try:
                    for i, (p, idx) in enumerate(batches):
                        check_cancel()
                        pending.append((i, p, idx, pool.submit(forward, idx)))
                        while len(pending) > self.workers:
                            j, q, jdx, fut = pending.popleft()
                            collect(j, q, jdx, fut.result())
                    while pending:
                        check_cancel()
                        j, q, jdx, fut = pending.popleft()
                        collect(j, q, jdx, fut.result())
                except BaseException:
                    for *_, fut in pending:
                        fut.cancel()
                    raise
        finally:
            torch.set_num_threads(previous)

    def predict(self, points, colors, normals, canon, garments, *, passes: int = 1,
                order: str = "shuffled", seed: int = 0, restrict: bool = False,
                progress: Progress | None = None,
                cancelled: Callable[[], bool] | None = None) -> Prediction:
        """Logits, labels, probabilities, confidence and entropy for every point.

        points/normals/canon (N, 3); colors (N, 3) in 0-1 or 0-255; garments (18,) 0/1.
        ``restrict``: labels only from the classes set in ``garments``
        (:meth:`Prediction.restricted`); the logits are the network's either way.
        ``progress(fraction, stage)`` is called after each batch; ``cancelled()`` is
        checked before each batch and raises :class:`Cancelled` when true.
        """
        if order not in ORDERS:
            raise ScanError(f"unknown order {order!r}", "use shuffled or sequential")
        if int(passes) < 1:
            raise ScanError(f"passes must be at least 1, got {passes}")
        passes = int(passes)
        xyz = _points_array("points", points, None)
        n = len(xyz)
        if n == 0:
            raise ScanError("the scan has no points (N = 0)",
                            "give a scan with at least one point")
        _points_array("colors", colors, n)  # checks only: uint8 vs float decides the scale
        rgb = colors_to_unit(np.asarray(colors))
        nrm = _points_array("normals", normals, n)
        can = _points_array("canon_pose", canon, n)
        garm = check_garments(garments, self.config.n_classes)

        dev = self.device
        feats = torch.from_numpy(np.concatenate([xyz, rgb, nrm, can], axis=1))
        garm_t = torch.from_numpy(garm).to(dev)
        n_cls = self.config.n_classes
        logits_out = np.empty((n, n_cls), np.float32) if passes == 1 else None
        prob_sum = None if passes == 1 else np.zeros((n, n_cls), np.float64)

        perms = chunk_orders(n, passes, order, seed)
        cs = self.chunk_size
        batches: list[tuple[int, np.ndarray]] = []  # (pass, indices (B, chunk))
        n_full = n // cs
        # fewer chunks per batch when there are too few batches to keep every worker busy
        per_batch = max(1, min(self.max_batch_chunks, (n_full * passes) // max(1, self.workers)))
        for p, perm in enumerate(perms):
            full = perm[: n_full * cs].reshape(n_full, cs)
            for s in range(0, n_full, per_batch):
                batches.append((p, full[s:s + per_batch]))
            if n_full * cs < n:
                batches.append((p, perm[n_full * cs:][None, :]))

        def forward(idx: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                x = feats[torch.from_numpy(idx.reshape(-1))].view(*idx.shape, -1).to(dev)
                out = self.fast(x[..., :9], x[..., 9:], garm_t.expand(idx.shape[0], -1))
                return out.float().reshape(-1, n_cls).cpu().numpy()

        def collect(i: int, p: int, idx: np.ndarray, out: np.ndarray) -> None:
            flat = idx.reshape(-1)
            if passes == 1:
                logits_out[flat] = out
            else:  # softmax in float64: averaging must not depend on the pass order
                z = out.astype(np.float64)
                z = np.exp(z - z.max(axis=1, keepdims=True))
                prob_sum[flat] += z / z.sum(axis=1, keepdims=True)
            if progress is not None:
                progress((i + 1) / len(batches),
                         f"pass {p + 1}/{passes}: {i + 1}/{len(batches)} batches")

        def check_cancel() -> None:
            if cancelled is not None and cancelled():
                raise Cancelled()

        if self.workers <= 1:
            for i, (p, idx) in enumerate(batches):
                check_cancel()
                collect(i, p, idx, forward(idx))
        else:
            self._run_parallel(batches, forward, collect, check_cancel)
        if passes == 1:
            logits_t = torch.from_numpy(logits_out)
            probs = torch.softmax(logits_t, dim=-1)
        else:
            probs = torch.from_numpy((prob_sum / passes).astype(np.float32))
            logits_t = torch.log(probs.clamp_min(1e-30))
        prediction = _summarize(logits_t, probs)
        return prediction.restricted(garm)[0] if restrict else prediction


def _summarize(logits: torch.Tensor, probs: torch.Tensor) -> Prediction:
    conf, labels = probs.max(dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    return Prediction(
        logits=logits.numpy().astype(np.float32, copy=False),
        probabilities=probs.numpy().astype(np.float32, copy=False),
        labels=labels.numpy().astype(np.int64),
        confidence=conf.numpy().astype(np.float32),
        entropy=entropy.numpy().astype(np.float32),
    )


class GatedPredictor:
    """A gated fine-tune version: its tuned weights and the weights it started from, each
    scan labelled by the one more confident on it (mean probability of each point's label
    among the listed garments). A version tuned to a studio's look then reads that look
    without unlearning every other scan (docs/training.md, "Gated versions"). Costs
    two predictions per scan; same arguments and results as :class:`Predictor`, with
    ``Prediction.source`` saying which weights labelled the scan.
    """

    def __init__(self, model: CloseNet, fallback: CloseNet, **options: Any) -> None:
        self.tuned = Predictor(model, **options)
        self.fallback = Predictor(fallback, **options)
        self.device = self.tuned.device

    def predict(self, points, colors, normals, canon, garments, *, restrict: bool = False,
                progress: Progress | None = None, **options: Any) -> Prediction:
        results = []
        for k, predictor in enumerate((self.tuned, self.fallback)):
            part = None if progress is None else (
                lambda f, s, k=k: progress((k + f) / 2, s))
            results.append(predictor.predict(points, colors, normals, canon, garments,
                                             progress=part, **options))
        limited = [r.restricted(garments)[0] for r in results]
        pick = 0 if limited[0].confidence.mean() > limited[1].confidence.mean() else 1
        return replace((limited if restrict else results)[pick],
                       source=("tuned", "fallback")[pick])


def predictor_for(model: CloseNet, fallback: CloseNet | None = None,
                  **options: Any) -> Predictor | GatedPredictor:
    """The predictor of a checkpoint: gated when it has ``fallback`` weights."""
    if fallback is None:
        return Predictor(model, **options)
    return GatedPredictor(model, fallback, **options)


def predict_scan(arrays: dict, checkpoint, **options) -> Prediction:
    """Predict a CloSe-D scan dict (points, colors, normals, canon_pose, garments).

    ``options``: device, chunk_size, max_batch_chunks (for the Predictor) and
    passes, order, seed, progress, cancelled (for :meth:`Predictor.predict`).
    """
    missing = [k for k in ("points", "colors", "normals", "canon_pose", "garments")
               if k not in arrays]
    if missing:
        raise ScanError(f"the scan lacks {', '.join(missing)}",
                        "a CloSe-D scan needs points, colors, normals, canon_pose, garments")
    make = {k: options.pop(k) for k in ("device", "chunk_size", "max_batch_chunks", "workers")
            if k in options}
    predictor = predictor_for(checkpoint.model, getattr(checkpoint, "fallback", None), **make)
    return predictor.predict(arrays["points"], arrays["colors"], arrays["normals"],
                             arrays["canon_pose"], arrays["garments"], **options)
