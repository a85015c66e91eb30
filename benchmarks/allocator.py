"""Seconds with glibc's default malloc thresholds vs close_blender.memory.keep_freed_memory.

Each setting runs in its own fresh process (the thresholds are per process), on the same
work the worker does: fine-tuning steps through the whole network (the ``input`` layer
choice, 4 chunks of 2048 points), a whole-scan prediction at the default passes, and an
Anny body fit, each on a generated 30k-point scan. Printed per setting: wall and CPU
seconds (user, system), minor page faults and peak memory; then the ratios.

    .venv/bin/python benchmarks/allocator.py [--points 30000] [--steps 8] [--no-fit]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def _since(start: tuple[float, float, float, int]) -> dict[str, float]:
    now = _usage()
    return {"wall": now[0] - start[0], "user": now[1] - start[1], "sys": now[2] - start[2],
            "faults": float(now[3] - start[3])}


def child(keep: bool, points: int, steps: int, fit: bool) -> dict:
    """Run the three jobs in this process; the thresholds set first when ``keep``."""
    from close_blender.memory import keep_freed_memory

    applied = keep_freed_memory() if keep else False
    import numpy as np
    import torch

    from close_blender.defaults import PASSES
    from inference.checkpoints import load_checkpoint
    from inference.devices import configure_threads
    from inference.finetune import trainable_parameters
    from inference.predictor import Predictor
    from inference.synth import generate_scan

    configure_threads()
    torch.manual_seed(0)
    scan = generate_scan(2000, points, index=0)
    model = load_checkpoint("default").model
    out: dict = {"applied": applied}

    params = trainable_parameters(model, "input")
    opt = torch.optim.Adam(params, lr=1e-4)
    model.eval()
    rng = np.random.default_rng(0)
    feats = np.concatenate([scan["points"], scan["normals"], scan["colors"]], 1)
    for i in range(steps + 1):  # the first step warms up and is not counted
        if i == 1:
            start = _usage()
        idx = rng.choice(len(feats), (4, 2048))
        p = torch.from_numpy(feats[idx].astype(np.float32))
        c = torch.from_numpy(scan["canon_pose"][idx].astype(np.float32))
        g = torch.from_numpy(np.repeat(scan["garments"][None], 4, 0).astype(np.float32))
        loss = model(p, c, g).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out["finetune_steps"] = _since(start)

    predictor = Predictor(model, device="cpu")
    start = _usage()
    predictor.predict(scan["points"], scan["colors"], scan["normals"], scan["canon_pose"],
                      scan["garments"], passes=PASSES)
    out["predict"] = _since(start)

    if fit:
        from inference.body.fit import fit_anny

        start = _usage()
        verts = scan["points"].astype(np.float64) * float(scan["scale"]) + scan["centers"]
        fit_anny(verts, scan["faces"], up="auto", seed=0)
        out["body_fit"] = _since(start)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=30000)
    ap.add_argument("--steps", type=int, default=8, help="fine-tuning steps timed")
    ap.add_argument("--no-fit", action="store_true", help="skip the body fit (~15 s a run)")
    ap.add_argument("--child", choices=("default", "keep"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "keep", args.points, args.steps, not args.no_fit)))
        return 0
    runs = {}
    for setting in ("default", "keep"):
        cmd = [sys.executable, __file__, "--child", setting, "--points", str(args.points),
               "--steps", str(args.steps)] + (["--no-fit"] if args.no_fit else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        runs[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    if not runs["keep"]["applied"]:
        print("keep_freed_memory() changed nothing on this system (not glibc, or the user's "
              "own MALLOC_* / GLIBC_TUNABLES settings): both runs used the same allocator")
    jobs = [k for k in ("finetune_steps", "predict", "body_fit") if k in runs["default"]]
    print(f"{'job':16s} {'setting':8s} {'wall s':>8s} {'user s':>8s} {'sys s':>8s} "
          f"{'faults':>10s}")
    for job in jobs:
        for setting in ("default", "keep"):
            r = runs[setting][job]
            print(f"{job:16s} {setting:8s} {r['wall']:8.2f} {r['user']:8.2f} {r['sys']:8.2f} "
                  f"{r['faults']:10.0f}")
    print("\npeak memory: default {:.0f} MB, keep {:.0f} MB".format(
        runs["default"]["peak_rss_mb"], runs["keep"]["peak_rss_mb"]))
    for job in jobs:
        print(f"{job}: {runs['default'][job]['wall'] / runs['keep'][job]['wall']:.2f}x faster "
              f"with keep_freed_memory (wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
