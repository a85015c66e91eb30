"""Score a trained checkpoint on its held-out set at the default pass count and write a
copy (the same weights) whose metadata holds that figure too.

    python tools/rescore_checkpoint.py CKPT TEST_DIR --out NEW.safetensors

``train`` records ``provenance.metrics.test_default_passes`` itself since the default
became two passes (close_blender/defaults.py); this brings a checkpoint trained before
that up to date without retraining. Checkpoints are never overwritten: the copy gets a
new name (and a new sha256); its ``provenance.rescored_from`` names the original.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from close_blender.defaults import PASSES
    from inference.checkpoints import load_checkpoint, save_native
    from inference.training import evaluate_scans, load_scans

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("test", nargs="+", help="the held-out CloSe-D files or folders")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    ckpt = load_checkpoint(args.checkpoint)
    meta = dict(ckpt.meta)
    prov = dict(meta.get("provenance") or {})
    scans = load_scans(args.test)
    names = sorted(s.name for s in scans)
    expected = (prov.get("training_data") or {}).get("test_files")
    if expected and names != sorted(expected):
        print(f"error: these are not the scans of the checkpoint's held-out set ({len(expected)} "
              "files named in provenance.training_data.test_files)", file=sys.stderr)
        return 2
    result = evaluate_scans(ckpt.model, scans, 0, seed=0, passes=PASSES)
    prov["metrics"] = {**(prov.get("metrics") or {}), "test_default_passes": result}
    prov["rescored_from"] = ckpt.sha256
    meta["provenance"] = prov
    sha = save_native(args.out, ckpt.model, ckpt.config, meta)
    print(f"{PASSES} passes: strict mIoU {result['miou_strict']:.4f}, reference "
          f"{result['miou_reference']:.4f}, accuracy {result['accuracy']:.4f}")
    print(f"wrote {args.out} (sha256 {sha[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
