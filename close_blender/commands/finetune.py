"""Fine-tune a checkpoint on corrected scans (one round), writing a new model version.

CORRECTIONS is a folder (or files) of CloSe-D .npz scans with corrected labels and,
optionally, a `changed` (N,) bool array marking the vertices the artist changed
(they weigh more). Corrections already used by the checkpoint's lineage are
replayed, with a fixed sample of synthetic scans, so the model does not forget.
The version is written as OUT/NAME-vNNN.safetensors (never overwriting one) with
its parent's hash, the data used and before/after metrics. It is made active
unless the replay set got worse by more than the threshold (then it is flagged).
"""

from __future__ import annotations

import argparse

HELP = "fine-tune a checkpoint on corrected scans"
ORDER = 45


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="starting checkpoint: .pth (with _cfg.yaml), .safetensors or "
                             "a project name like default")
    parser.add_argument("--corrections", nargs="+", required=True,
                        help="corrected scans: .npz files, folders or zips")
    parser.add_argument("--out", required=True, help="folder for the model versions")
    parser.add_argument("--name", default="finetuned", help="version name prefix")
    parser.add_argument("--heldout", nargs="+", default=[],
                        help="held-out corrected scans, scored before and after")
    parser.add_argument("--replay", help="folder of the fixed replay set "
                                         "(default OUT/replay, made once)")
    parser.add_argument("--layers", help="what trains (default: FinetuneConfig's, colour: a "
                                         "colour mix for a studio's look; head: the last "
                                         "decoder layers; decoder, all, input, or two joined "
                                         "by '+'; see docs/training.md)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 40)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 3e-4)")
    parser.add_argument("--changed-weight", type=float, help="loss weight of changed "
                                                             "vertices (default 3)")
    parser.add_argument("--distill", type=float, help="weight of the pull towards the "
                        "starting model's predictions on replay data (default: FinetuneConfig's)")
    parser.add_argument("--flag-threshold", type=float,
                        help="largest allowed drop of replay strict mIoU (default 0.01)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--no-gate", dest="gate", action="store_false",
                        help="a plain version: no starting weights kept beside the tuned "
                             "ones (default: gated, each scan labelled by the surer of the two)")
    parser.add_argument("--no-activate", action="store_true",
                        help="do not make the new version active")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    from pathlib import Path

    from ..errors import CloseError
    from ..scan_io import expanded_scan_paths

    if args.steps is not None and args.steps < 1:
        raise CloseError(f"--steps must be at least 1, not {args.steps}")
    from inference.finetune import FinetuneConfig, finetune
    from inference.training import TextBar

    cfg = FinetuneConfig(gate=args.gate)
    for key in ("layers", "steps", "lr", "changed_weight", "distill", "flag_threshold", "seed"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    out = Path(args.out)
    with contextlib.ExitStack() as unpacked:  # zips are extracted for this run only
        corrections = unpacked.enter_context(expanded_scan_paths(args.corrections))
        heldout = unpacked.enter_context(expanded_scan_paths(args.heldout)) \
            if args.heldout else []
        res = finetune(args.checkpoint, corrections, out, name=args.name,
                       heldout=heldout, replay=args.replay, cfg=cfg,
                       progress=None if args.json else TextBar())
    activated = False
    if not res.flagged and not args.no_activate:
        from ..model_versions import MODELS_DIR, activate

        activate(out.parent if out.name == MODELS_DIR else out, res.path)
        activated = True
    m = res.metrics
    summary = {"path": str(res.path), "sha256": res.sha256, "flagged": res.flagged,
               "flag_reason": res.flag_reason, "activated": activated,
               "replay_strict_before": m["before"]["replay"]["miou_strict"],
               "replay_strict_after": m["after"]["replay"]["miou_strict"],
               "seconds": res.timing["seconds_total"]}
    if m["before"]["heldout"]:
        summary["heldout_strict_before"] = m["before"]["heldout"]["miou_strict"]
        summary["heldout_strict_after"] = m["after"]["heldout"]["miou_strict"]
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for k, v in summary.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0
