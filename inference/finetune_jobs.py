"""Worker job ``finetune``: one fine-tuning round on the corrections library.

The training itself is :func:`inference.finetune.finetune`; this job picks the
usable correction files (a corrupt or partial file is skipped and named in the
warnings, never deleted, and never stops the worker), maps the round's stages
onto one progress bar, honours cancel (nothing is written then, so the
previous model stays active) and returns the new version's path, hash,
metrics and flag. Activation is Blender's decision (not when flagged).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from close_blender.corrections import REQUIRED_KEYS
from close_blender.errors import CloseError, ScanError
from close_blender.scan_io import expanded_scan_paths, load_scan, scan_paths

from .jobs import CHOOSE_CHECKPOINT, Arrays, Fields, JobContext, job

# (stage text prefix, start, end) of the overall progress bar
_PHASES = (("making the replay set", 0.0, 0.1), ("evaluating (before)", 0.1, 0.2),
           ("evaluating (after)", 0.9, 1.0), ("", 0.2, 0.9))


def _progress(ctx: JobContext):
    def report(fraction: float, stage: str = "") -> None:
        for prefix, start, end in _PHASES:
            if stage.startswith(prefix):
                ctx.progress(start + (end - start) * float(fraction), stage.capitalize())
                return
    return report


def usable_files(paths: list[str] | list[Path]) -> tuple[list[Path], list[str]]:
    """(correction files that load as training data, warnings naming the others).

    ``paths`` are files or folders; a zip must be expanded by the caller
    (:func:`expanded_scan_paths`), who then owns the extracted files' lifetime.
    """
    good: list[Path] = []
    warnings: list[str] = []
    for f in scan_paths(paths):
        try:
            load_scan(f, require=REQUIRED_KEYS)
        except ScanError as exc:
            warnings.append(f"skipped {f.name}: {exc.message}")
            continue
        good.append(f)
    return good, warnings


def finetune_config(options: dict[str, Any]):
    """A FinetuneConfig from plain options; unknown keys are refused by name."""
    from inference.finetune import FinetuneConfig

    cfg = FinetuneConfig()
    known = {f.name for f in dataclasses.fields(cfg)} - {"augment"}
    unknown = sorted(set(options) - known - {"replay", "heldout", "holdout", "name", "epochs"})
    if unknown:
        raise CloseError(f"unknown fine-tune options: {', '.join(unknown)}",
                         f"use some of: {', '.join(sorted(known))}")
    for key in known & set(options):
        default = getattr(cfg, key)  # None: an automatic choice, else the field's type
        setattr(cfg, key, options[key] if default is None else type(default)(options[key]))
    if options.get("epochs"):  # passes over the new corrections, as the panel calls them
        cfg.new_passes = int(options["epochs"])
    return cfg


@job("finetune")
def finetune_job(params: dict, arrays: Arrays, ctx: JobContext) -> Fields:
    """Fine-tune ``checkpoint`` on the corrections and write a new version.

    params: ``checkpoint`` (path or project name), ``files`` (correction .npz
    files) or ``corrections`` (their folder or zip), ``models_dir`` (where
    versions go), ``options``: FinetuneConfig fields (``steps``, ``layers``,
    ``n_points``, ...), ``epochs`` (passes over new corrections), ``holdout``
    (the last N files are only evaluated, not trained on), ``heldout`` (extra
    files for evaluation only), ``replay`` (replay-set folder, default
    ``<models_dir>/replay``), ``name`` (version name, default ``finetuned`` like the CLI).
    """
    checkpoint = params.get("checkpoint")
    if not checkpoint:
        raise CloseError("no checkpoint to start from", CHOOSE_CHECKPOINT)
    models = params.get("models_dir")
    if not models:
        raise CloseError("no folder for model versions was given",
                         "set the data folder in the add-on preferences")
    sources = list(params.get("files") or [])
    if not sources and params.get("corrections"):
        sources = [params["corrections"]]
    if not sources:
        raise CloseError("no corrections were given", "save a corrected scan first")
    options = dict(params.get("options") or {})
    cfg = finetune_config(options)
    ctx.progress(0.0, "Checking the corrections")
    with contextlib.ExitStack() as unpacked:  # zips are extracted for this job only
        files, warnings = usable_files(unpacked.enter_context(expanded_scan_paths(sources)))
        heldout_extra: list[Path] = []
        if options.get("heldout"):
            heldout_extra, more = usable_files(unpacked.enter_context(
                expanded_scan_paths(list(options["heldout"]))))
            warnings += more
        return _finetune_round(ctx, cfg, options, checkpoint, models, files, heldout_extra,
                               warnings)


def _finetune_round(ctx: JobContext, cfg, options: dict, checkpoint: str, models: str,
                    files: list[Path], heldout_extra: list[Path], warnings: list[str]) -> Fields:
    """The fine-tuning round itself, on checked correction files."""
    from inference.finetune import finetune

    holdout = int(options.get("holdout") or 0)
    heldout = list(heldout_extra)
    if holdout > 0:
        if len(files) <= holdout:
            warnings.append(f"only {len(files)} correction(s): none held out for evaluation")
        else:
            heldout += files[-holdout:]
            files = files[:-holdout]
    if not files:
        raise CloseError("no usable correction files" + (f" ({'; '.join(warnings)})"
                                                         if warnings else ""),
                         "save a corrected scan again; broken files are listed in the panel")
    ctx.check_cancelled()
    result = finetune(checkpoint, files, models, name=str(options.get("name") or "finetuned"),
                      heldout=heldout, replay=options.get("replay"), cfg=cfg,
                      progress=_progress(ctx), cancelled=ctx.cancelled)
    metrics = result.metrics
    before = (metrics.get("before") or {}).get("replay") or {}
    after = (metrics.get("after") or {}).get("replay") or {}
    summary = ""
    if "miou_strict" in before and "miou_strict" in after:
        summary = (f"replay mIoU {100 * before['miou_strict']:.1f} -> "
                   f"{100 * after['miou_strict']:.1f}")
    ctx.progress(1.0, "Done")
    return {"path": str(result.path), "sha256": result.sha256, "flagged": result.flagged,
            "flag_reason": result.flag_reason, "metrics": metrics, "timing": result.timing,
            "files": [f.name for f in files], "heldout": [f.name for f in heldout],
            "summary": summary, "warnings": warnings}
