"""CloSe-Net checkpoints: the published ``.pth`` + ``_cfg.yaml`` pair and the native format.

Published: ``NAME.pth`` is a plain state dict (129 entries for the published
model) in the reference code's key layout, ``NAME_cfg.yaml`` beside it holds
``model_arch`` and ``data.n_classes``. It is read with weights-only loading
(pickled code is refused) and mapped key by key onto :class:`CloseNet`: every
published key must be used, every parameter and buffer filled, shapes equal.

Native: ``NAME.safetensors`` holds this project's own state-dict keys and, in
its header metadata, one JSON document (``close_blender``) with the format
version, architecture, class names and palette, canonical body frame id and
provenance. It is what training and fine-tuning write; files are never
overwritten, so a checkpoint's sha256 identifies it for good.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from close_blender.canonical import CANONICAL_FRAME_ID
from close_blender.errors import CheckpointError
from close_blender.fileio import atomic_path
from close_blender.labels import CLASS_NAMES, PALETTE
from close_blender.model_versions import META_KEY, file_sha256
from inference.closenet import CloseNet, CloseNetConfig

NATIVE_FORMAT = "close-blender-closenet"
NATIVE_VERSION = 2  # 2: may hold a gated version's fallback tensors (written only then)
FALLBACK_PREFIX = "fallback/"
MODELS_DIR = Path(__file__).resolve().parent / "models"
PROJECT_NAMES = {"default": MODELS_DIR / "default.safetensors"}


@dataclass
class LoadedCheckpoint:
    model: CloseNet  # eval mode, float32, on CPU
    config: CloseNetConfig
    meta: dict
    path: Path
    sha256: str  # of the weights file
    # a gated fine-tune version's starting weights (None for every other checkpoint): the
    # predictor labels each scan with whichever of the two is more confident on it
    fallback: CloseNet | None = None


# ---------------------------------------------------------------- key mapping

_BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_TNET = "pc_enc.transform_net."
_TNET_MAP = {
    "conv1.0": "point_encoder.tnet.edge1.conv",
    "conv1.1": "point_encoder.tnet.edge1.bn",
    "bn1": "point_encoder.tnet.edge1.bn",  # the same BN stored a second time
    "conv2.0": "point_encoder.tnet.edge2.conv",
    "conv2.1": "point_encoder.tnet.edge2.bn",
    "bn2": "point_encoder.tnet.edge2.bn",  # the same BN stored a second time
    "conv3.0": "point_encoder.tnet.point.conv",
    "conv3.1": "point_encoder.tnet.point.bn",
    "linear1": "point_encoder.tnet.fc1.linear",
    "bn3": "point_encoder.tnet.fc1.bn",
    "linear2": "point_encoder.tnet.fc2.linear",
    "bn4": "point_encoder.tnet.fc2.bn",
    "transform": "point_encoder.tnet.out",
}
# Published T-Net names that duplicate another entry; export writes both.
_TNET_ALIASES = {"bn1": "conv1.1", "bn2": "conv2.1"}
# Published key template <-> this project's key template. ``{i}``/``{j}`` are layer
# indices, ``{rest}`` the parameter name; both directions are derived from this one table.
_KEY_TEMPLATES = [
    ("pc_enc.convs.{i}.s_mlp.{j}.0.{rest}", "point_encoder.edge_convs.{i}.layers.{j}.conv.{rest}"),
    ("pc_enc.convs.{i}.s_mlp.{j}.1.{rest}", "point_encoder.edge_convs.{i}.layers.{j}.bn.{rest}"),
    ("pc_enc.lin_global.0.{rest}", "point_encoder.global_conv.conv.{rest}"),
    ("pc_enc.lin_global.1.{rest}", "point_encoder.global_conv.bn.{rest}"),
    ("garm_enc.garm_embedding.weight", "garment_encoder.codebook"),
    ("garm_enc.attn.{rest}", "garment_encoder.attn.{rest}"),
    ("garm_enc.ff.layers.0.0.{rest}", "garment_encoder.proj.conv.{rest}"),
    ("garm_enc.ff.layers.0.1.{rest}", "garment_encoder.proj.bn.{rest}"),
    ("garm_enc.ln.ln.{rest}", "garment_encoder.norm_a.{rest}"),
    ("garm_enc.norm.{rest}", "garment_encoder.norm_b.{rest}"),
    ("segm_dec.layers.{i}.0.{rest}", "decoder.layers.{i}.conv.{rest}"),
    ("segm_dec.layers.{i}.1.{rest}", "decoder.layers.{i}.bn.{rest}"),
]


def _template_regex(template: str) -> re.Pattern[str]:
    """A full-match regex for a key template: indices are digits, ``rest`` anything."""
    pattern = re.escape(template)
    for name in ("i", "j"):
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile(pattern.replace(re.escape("{rest}"), r"(?P<rest>.+)"))


_PATTERNS = [(_template_regex(pub), native) for pub, native in _KEY_TEMPLATES]
_REVERSE = [(_template_regex(native), pub) for pub, native in _KEY_TEMPLATES]


def published_to_native_key(key: str) -> str | None:
    """This project's module key for a published key (None if it has no place)."""
    if key.startswith(_TNET):
        rest = key[len(_TNET):]
        for name, target in _TNET_MAP.items():
            if rest.startswith(name + "."):
                return target + rest[len(name):]
        return None
    for pattern, template in _PATTERNS:
        m = pattern.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    return None


def native_to_published_keys(key: str) -> list[str]:
    """Published key(s) for one of this project's keys (T-Net BNs map to two)."""
    tnet = "point_encoder.tnet."
    if key.startswith(tnet):
        for name, target in _TNET_MAP.items():
            if name in _TNET_ALIASES:
                continue
            if key.startswith(target + "."):
                suffix = key[len(target):]
                keys = [_TNET + name + suffix]
                keys += [_TNET + alias + suffix for alias, main in _TNET_ALIASES.items()
                         if main == name]
                return keys
        raise CheckpointError(f"no published name for {key}")
    for pattern, template in _REVERSE:
        m = pattern.fullmatch(key)
        if m:
            return [template.format(**m.groupdict())]
    raise CheckpointError(f"no published name for {key}")


def map_published_state(state: dict[str, torch.Tensor], model: CloseNet) -> dict[str, torch.Tensor]:
    """Map a published state dict onto ``model``'s keys, strictly."""
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unknown = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key} is a {type(value).__name__}, "
                                  "not a tensor", "a CloSe-Net .pth is a plain state dict")
        target = published_to_native_key(key)
        if target is None or target not in expected:
            unknown.append(key)
            continue
        want = tuple(expected[target].shape)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"checkpoint key {key} has shape {tuple(value.shape)}, the model expects {want}",
                "the weights do not fit the architecture in the _cfg.yaml")
        if target in mapped:
            if not torch.equal(mapped[target], value):
                raise CheckpointError(
                    f"checkpoint keys {source[target]} and {key} should hold the same "
                    "BatchNorm but differ", "the checkpoint is inconsistent or corrupted")
            continue
        mapped[target] = value
        source[target] = key
    if unknown:
        raise CheckpointError(
            f"checkpoint has {len(unknown)} key(s) the model does not use: "
            + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""),
            "it is not a CloSe-Net checkpoint of this architecture")
    missing = [" or ".join(native_to_published_keys(k)) for k in expected if k not in mapped]
    if missing:
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} entr(ies) the model needs: "
            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
            "it is incomplete or for another architecture")
    return mapped


def check_native_state(state: dict[str, torch.Tensor], model: CloseNet) -> None:
    """Same strictness for native keys: no extra, none missing, shapes equal."""
    expected = model.state_dict()
    extra = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    if extra or missing:
        raise CheckpointError(
            f"checkpoint keys do not match the model (unused: {extra[:5]}, missing: {missing[:5]})",
            "it is not a CloSe-Net checkpoint of this architecture")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"checkpoint key {k} has shape {tuple(v.shape)}, "
                f"the model expects {tuple(expected[k].shape)}",
                "the weights do not fit the stored architecture")


def build_model(config: CloseNetConfig, state: dict[str, torch.Tensor]) -> CloseNet:
    model = CloseNet(config)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in state.items()},
                          strict=True)
    return model.float().eval()


# ---------------------------------------------------------------- helpers


sha256_file = file_sha256  # the core's (cached per path, size and mtime); old name kept


def cfg_path_for(pth: Path) -> Path:
    """``NAME.pth`` -> ``NAME_cfg.yaml`` (falls back to ``closenet_cfg.yaml`` style only)."""
    return pth.with_name(pth.stem + "_cfg.yaml")


def default_meta(config: CloseNetConfig, source: str = "") -> dict[str, Any]:
    return {
        "format": NATIVE_FORMAT,
        "format_version": NATIVE_VERSION,
        "architecture": config.to_dict(),
        "class_names": list(CLASS_NAMES[: config.n_classes]),
        "palette": PALETTE[: config.n_classes].tolist(),
        "canonical_frame": CANONICAL_FRAME_ID,
        "provenance": {"source": source, "parent_sha256": None, "training_data": None,
                       "date": None, "metrics": None},
    }


# ---------------------------------------------------------------- published format


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {path.name} ({exc})", "it must be YAML") from None
    if not isinstance(data, dict) or "model_arch" not in data:
        raise CheckpointError(f"{path.name} has no model_arch section",
                              "use the _cfg.yaml that ships beside the weights")
    return data


def load_published(path: str | os.PathLike) -> LoadedCheckpoint:
    """Load ``NAME.pth`` with its ``NAME_cfg.yaml``."""
    pth = Path(path)
    cfg_file = cfg_path_for(pth)
    if not cfg_file.is_file():
        raise CheckpointError(f"{pth.name} has no config beside it (expected {cfg_file.name})",
                              "put the _cfg.yaml that ships with the weights next to the .pth")
    cfg_yaml = _read_yaml(cfg_file)
    n_classes = int((cfg_yaml.get("data") or {}).get("n_classes", len(CLASS_NAMES)))
    config = CloseNetConfig.from_model_arch(cfg_yaml["model_arch"], n_classes)
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(
            f"{pth.name} cannot be loaded as plain weights ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            "only plain state dicts are accepted; a file that needs code to unpickle is refused"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{pth.name} holds a {type(state).__name__}, not a state dict",
                              "a CloSe-Net .pth is a plain state dict")
    model = CloseNet(config)
    mapped = map_published_state(state, model)
    model = build_model(config, mapped)
    meta = default_meta(config, source=f"published:{pth.name}")
    return LoadedCheckpoint(model, config, meta, pth, file_sha256(pth))


def export_published(native_path: str | os.PathLike, out_pth_path: str | os.PathLike) -> None:
    """Write a native checkpoint as the published pair ``NAME.pth`` + ``NAME_cfg.yaml``.

    Like every checkpoint, neither file ever replaces an existing one.
    """
    import yaml

    out = Path(out_pth_path)
    if out.suffix != ".pth":
        raise CheckpointError(f"{out.name} must end in .pth")
    cfg_out = cfg_path_for(out)

    def exists_error(path: Path) -> CheckpointError:
        return CheckpointError(f"{path} exists and checkpoints are never overwritten",
                               "choose a new name for the exported checkpoint")

    for path in (out, cfg_out):
        if path.exists():
            raise exists_error(path)
    ckpt = load_native(native_path)
    state: dict[str, torch.Tensor] = {}
    for key, value in ckpt.model.state_dict().items():
        for pub in native_to_published_keys(key):
            state[pub] = value.detach().clone().contiguous()
    cfg = {"model": "closenet_dgcnn", "model_arch": ckpt.config.to_model_arch(),
           "data": {"n_classes": ckpt.config.n_classes, "pointcloud_samples": 2048}}
    try:
        with atomic_path(out, overwrite=False) as tmp:
            torch.save(state, tmp)
    except FileExistsError:
        raise exists_error(out) from None
    try:
        with atomic_path(cfg_out, overwrite=False) as tmp:
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=True), encoding="utf-8")
    except FileExistsError:
        out.unlink(missing_ok=True)  # ours, just written: no .pth without its own config
        raise exists_error(cfg_out) from None


# ---------------------------------------------------------------- native format


def save_native(path: str | os.PathLike, model: CloseNet, config: CloseNetConfig,
                meta: dict, fallback: CloseNet | None = None) -> str:
    """Write weights + metadata as ``.safetensors``; never overwrites; returns its sha256.

    ``fallback`` (a gated version's starting weights) is stored as the tensors that differ
    from ``model``'s, under ``FALLBACK_PREFIX``; ``load_native`` rebuilds it.
    """
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != ".safetensors":
        raise CheckpointError(f"{target.name} must end in .safetensors")
    if target.exists():
        raise CheckpointError(f"{target} exists and checkpoints are never overwritten",
                              "choose a new name (for example with a version suffix)")
    full = default_meta(config)
    full.update(meta or {})
    full["format"], full["format_version"] = NATIVE_FORMAT, 1
    full["architecture"] = config.to_dict()
    prov = dict(default_meta(config)["provenance"])
    prov.update(full.get("provenance") or {})
    if not prov.get("date"):
        prov["date"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    full["provenance"] = prov
    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in model.state_dict().items()}
    if fallback is not None:
        for k, v in fallback.state_dict().items():
            v = v.detach().to("cpu")
            if not torch.equal(v, tensors[k]):
                tensors[FALLBACK_PREFIX + k] = v.contiguous().clone()
    if any(k.startswith(FALLBACK_PREFIX) for k in tensors):
        full["format_version"] = NATIVE_VERSION  # older readers refuse it by its version
    try:
        with atomic_path(target, overwrite=False) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(full)})
    except FileExistsError:
        raise CheckpointError(f"{target} exists and checkpoints are never overwritten",
                              "choose a new name") from None
    return file_sha256(target)


def load_native(path: str | os.PathLike) -> LoadedCheckpoint:
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p.name} is not a readable safetensors file ({exc})",
                              "the file may be truncated or of another format") from None
    if META_KEY not in header:
        raise CheckpointError(f"{p.name} has no CloSe metadata",
                              "native checkpoints are written by this project (save_native)")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p.name}: metadata is not valid JSON ({exc})") from None
    if meta.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{p.name}: unknown checkpoint format {meta.get('format')!r}")
    if int(meta.get("format_version", 0)) > NATIVE_VERSION:
        raise CheckpointError(
            f"{p.name} has format version {meta.get('format_version')}, this version reads "
            f"up to {NATIVE_VERSION}", "update close-blender")
    config = CloseNetConfig.from_dict(meta.get("architecture") or {})
    fallback = {k[len(FALLBACK_PREFIX):]: state.pop(k) for k in list(state)
                if k.startswith(FALLBACK_PREFIX)}
    check_native_state(state, CloseNet(config))
    unknown = sorted(set(fallback) - set(state))
    if unknown:
        raise CheckpointError(f"{p.name}: fallback tensors for unknown weights ({unknown[0]}...)",
                              "the file was not written by this project")
    return LoadedCheckpoint(build_model(config, state), config, meta, p, file_sha256(p),
                            build_model(config, {**state, **fallback}) if fallback else None)


# ---------------------------------------------------------------- entry points


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A path, or a project name (``default``), to an existing checkpoint file."""
    text = str(spec)
    if text in PROJECT_NAMES:
        path = PROJECT_NAMES[text]
        if not path.is_file():
            raise CheckpointError(
                f"the bundled '{text}' model is missing (expected {path})",
                "this build ships no bundled model yet; pass a .pth (with its _cfg.yaml) "
                "or a .safetensors checkpoint")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        names = ", ".join(PROJECT_NAMES)
        raise CheckpointError(f"no checkpoint at {path} (file not found)",
                              f"choose an existing .pth, .safetensors or one of: {names}")
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise CheckpointError(f"{path.name}: unknown checkpoint type {path.suffix!r}",
                              "use a published .pth (with _cfg.yaml) or a native .safetensors")
    return path


def load_checkpoint(spec: str | os.PathLike) -> LoadedCheckpoint:
    """Load a published ``.pth`` or native ``.safetensors`` (or a project name)."""
    path = resolve_checkpoint(spec)
    if path.suffix == ".safetensors":
        return load_native(path)
    return load_published(path)
