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
    from close_blender.errors import CloseError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("test", nargs="+", help="the held-out CloSe-D files or folders")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        return rescore(args.checkpoint, args.test, args.out)
    except CloseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def rescore(checkpoint: str, test: list[str], out: Path) -> int:
    """Score ``checkpoint`` at the default pass count and write the copy ``out``."""
    from close_blender.defaults import PASSES
    from close_blender.errors import CloseError
    from inference.checkpoints import load_checkpoint, save_native
    from inference.training import evaluate_scans, load_scans

    if out.exists():
        raise CloseError(f"{out} exists and checkpoints are never overwritten",
                         "choose a new output name")
    ckpt = load_checkpoint(checkpoint)
    meta = dict(ckpt.meta)
    prov = dict(meta.get("provenance") or {})
    scans = load_scans(test)
    names = sorted(s.name for s in scans)
    expected = (prov.get("training_data") or {}).get("test_files")
    if expected and names != sorted(expected):
        raise CloseError("these are not the scans of the checkpoint's held-out set "
                         f"({len(expected)} files named in provenance.training_data.test_files)",
                         "give the scans of the --test set it was trained with")
    result = evaluate_scans(ckpt.model, scans, 0, seed=0, passes=PASSES)
    prov["metrics"] = {**(prov.get("metrics") or {}), "test_default_passes": result}
    prov["rescored_from"] = ckpt.sha256
    meta["provenance"] = prov
    sha = save_native(out, ckpt.model, ckpt.config, meta)
    print(f"{PASSES} passes: strict mIoU {result['miou_strict']:.4f}, reference "
          f"{result['miou_reference']:.4f}, accuracy {result['accuracy']:.4f}")
    print(f"wrote {out} (sha256 {sha[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
