"""Points/s of the whole-scan predictor vs a straightforward reference-style loop.

Both run the same network (the fixture's CloSe-Net weights) on the same cloud:
the baseline feeds one 2048-point chunk at a time through the plain, unfused
``CloseNet`` under ``torch.no_grad`` (as the reference tool does); the predictor
uses its defaults (fused eval path, batched chunks, inference mode). Rounds
alternate between the two so that background load hits both alike; the best
round of each is reported, with their ratio and the label agreement.

    .venv/bin/python benchmarks/predict_throughput.py [--points 100000] [--rounds 3]
    .venv/bin/python benchmarks/predict_throughput.py --memory 1000000   # peak RSS
    .venv/bin/python benchmarks/predict_throughput.py --threads 1   # both on one core

Wall time on a shared machine punishes multi-threaded ops (threads wait for each
other while the cores serve other processes), so each round also prints CPU
time; ``--threads 1`` compares the two on one core, where neither is affected.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CKPT = REPO.parent / "shared" / "fixtures" / "closenet_reference" / "closenet.pth"


def make_cloud(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A body-sized cloud: points on a few ellipsoids (a surface, like a scan)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0.25, 0], [0, 0, 0], [0.1, -0.3, 0], [-0.1, -0.3, 0], [0, 0.42, 0]])
    radii = np.array([[0.12, 0.15, 0.08], [0.14, 0.12, 0.09], [0.05, 0.2, 0.05],
                      [0.05, 0.2, 0.05], [0.06, 0.07, 0.06]])
    part = rng.integers(0, len(centres), n)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = (centres[part] + d * radii[part]).astype(np.float32)
    nrm = (d / radii[part]).astype(np.float32)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    colors = (rng.uniform(0.2, 0.8, (len(centres), 3))[part]
              + rng.normal(0, 0.03, (n, 3))).clip(0, 1).astype(np.float32)
    garments = np.zeros(18, np.float32)
    garments[[1, 3, 8, 10, 12]] = 1
    return {"points": pts, "colors": colors, "normals": nrm,
            "canon_pose": (pts * np.float32(1.7)).astype(np.float32), "garments": garments}


def baseline(model, cloud, chunk: int = 2048, seed: int = 0) -> np.ndarray:
    """Reference style: shuffle, then one chunk at a time through the plain network."""
    import torch

    n = len(cloud["points"])
    perm = np.random.default_rng(seed).permutation(n)
    x = torch.from_numpy(np.concatenate([cloud["points"], cloud["colors"], cloud["normals"]], 1))
    can = torch.from_numpy(cloud["canon_pose"])
    g = torch.from_numpy(cloud["garments"])[None]
    logits = np.empty((n, 18), np.float32)
    with torch.no_grad():
        for s in range(0, n, chunk):
            idx = torch.from_numpy(perm[s:s + chunk])
            logits[idx.numpy()] = model(x[idx][None], can[idx][None], g)[0].T.numpy()
    return logits


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for both (default: one per core)")
    parser.add_argument("--memory", type=int, default=0, metavar="N",
                        help="only run the predictor on N points and report peak memory")
    args = parser.parse_args()

    import torch

    from inference.checkpoints import load_checkpoint
    from inference.predictor import Predictor

    ckpt = load_checkpoint(CKPT)
    predictor = Predictor(ckpt.model, device="cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
        predictor.workers = args.threads
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {predictor.device}, batch {predictor.max_batch_chunks} chunks")

    if args.memory:
        cloud = make_cloud(args.memory)
        predictor.predict(*make_cloud(4096, seed=1).values())
        before = peak_rss_mib()
        start = time.perf_counter()
        pred = predictor.predict(*cloud.values())
        seconds = time.perf_counter() - start
        print(f"{args.memory} points: {seconds:.1f} s, {args.memory / seconds:,.0f} points/s")
        print(f"peak RSS {peak_rss_mib():.0f} MiB (after loading, before predicting: "
              f"{before:.0f} MiB); outputs {pred.logits.nbytes * 2 / 2**20:.0f} MiB")
        return 0

    cloud = make_cloud(args.points)
    n = args.points
    warm = make_cloud(4096, seed=1)
    predictor.predict(*warm.values())
    baseline(ckpt.model, warm)
    fast_t, base_t = [], []
    for r in range(args.rounds):
        start, cpu = time.perf_counter(), time.process_time()
        ref = baseline(ckpt.model, cloud, seed=r)
        base_t.append(time.perf_counter() - start)
        base_cpu = time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        pred = predictor.predict(*cloud.values(), seed=r)
        fast_t.append(time.perf_counter() - start)
        fast_cpu = time.process_time() - cpu
        print(f"round {r + 1}: baseline {base_t[-1]:.2f} s (cpu {base_cpu:.2f} s), predictor "
              f"{fast_t[-1]:.2f} s (cpu {fast_cpu:.2f} s), label agreement "
              f"{(pred.labels == ref.argmax(1)).mean():.4f}")
    b, f = n / min(base_t), n / min(fast_t)
    print(f"baseline (plain network, one 2048-chunk at a time): {b:,.0f} points/s")
    print(f"predictor (fused, batched):                         {f:,.0f} points/s")
    print(f"ratio: {f / b:.2f}x (wall clock, best round of each; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
