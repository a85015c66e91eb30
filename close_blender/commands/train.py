"""Train CloSe-Net on labelled CloSe-D scans (.npz files or folders of them).

Recipe: 2048 random points per scan per step, Adam with cosine decay,
cross-entropy, plus augmentations for real scans (rotation about the vertical
axis, scale, colour jitter and dropout, position noise, varying density).
After every epoch the state is saved to OUT.state/ (resume with --resume) and
the validation set, if given, is scored. The checkpoint OUT (.safetensors) is
written once, at the end, with the architecture, the data used and the
metrics in its metadata; an existing file is never overwritten.
"""

from __future__ import annotations

import argparse

HELP = "train CloSe-Net on labelled CloSe-D scans"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", help="training scans: .npz files, folders or zips")
    parser.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    parser.add_argument("--config", help="YAML with model: and train: sections "
                                         "(default: the published architecture)")
    parser.add_argument("--init", help="start from this checkpoint's weights (.pth, "
                                       ".safetensors or a project name like default)")
    parser.add_argument("--val", nargs="+", default=[], help="validation scans (scored "
                                                             "after every epoch)")
    parser.add_argument("--test", nargs="+", default=[],
                        help="held-out scans scored once at the end (all points), "
                             "stored in the checkpoint metadata")
    parser.add_argument("--epochs", type=int, help="total number of epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: one "
                                                            "pass over the scans)")
    parser.add_argument("--batch-size", type=int, help="scans per step (default 4)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--class-balance", type=float, metavar="POWER",
                        help="weigh each class by frequency ** -POWER in the loss (default 0: "
                             "plain cross-entropy; 0.5 lifts small garments)")
    parser.add_argument("--scan-balance", type=float, metavar="POWER",
                        help="within each sample, weigh each class by its share ** -POWER "
                             "(default 0; 0.5 lifts a scan's small visible parts)")
    parser.add_argument("--average-from", type=float, metavar="FRACTION",
                        help="return the mean of the weights over the steps after this "
                             "fraction of the run (default 0: the last weights)")
    parser.add_argument("--dropout", type=float, metavar="P",
                        help="decoder dropout while training (default: the architecture's, "
                             "0.5; it changes no weights, so --init checkpoints keep working)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--no-augment", action="store_true", help="plain reference sampling")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state/")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import contextlib
    import sys
    from pathlib import Path

    from ..errors import CloseError

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CloseError(f"--out {out.name} must end in .safetensors",
                         "training writes the native checkpoint format")
    if out.exists():
        raise CloseError(f"{out} exists and checkpoints are never overwritten",
                         "choose a new --out name")

    from inference.training import TextBar, train_command

    from ..scan_io import expanded_scan_paths

    def log(text: str) -> None:
        print(("\n" if not args.quiet else "") + text, file=sys.stderr, flush=True)

    overrides = {k: v for k, v in {
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "threads": args.threads, "class_balance": args.class_balance,
        "scan_balance": args.scan_balance, "average_from": args.average_from}.items() if v is not None}
    with contextlib.ExitStack() as unpacked:  # zips are extracted for this run only

        def files(paths: list[str]) -> list:
            return unpacked.enter_context(expanded_scan_paths(paths)) if paths else []

        result = train_command(
            files(args.data), out, config_path=args.config, init=args.init,
            val=files(args.val), test=files(args.test), overrides=overrides,
            augment=not args.no_augment, resume=args.resume, dropout=args.dropout,
            progress=None if args.quiet else TextBar(), log=log)
    print(f"wrote {out} (sha256 {result['sha256'][:12]})")
    for name in ("val", "test", "test_default_passes"):
        m = result["metrics"].get(name)
        if m:
            print(f"{name}: mIoU strict {m['miou_strict']:.4f}, reference "
                  f"{m['miou_reference']:.4f}, accuracy {m['accuracy']:.4f} "
                  f"({m['n_scans']} scans, {m.get('passes', 1)} pass(es))")
    return 0
