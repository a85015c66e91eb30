"""CloSe-Net as plain, trainable PyTorch modules.

The forward pass is the one of the published CloSe-Net weights (see
``shared/docs/closenet-architecture.md``): a DGCNN point encoder with a
spatial transform, the canonical body coordinates as they are, an attention
encoder over a learned garment codebook, and a 1x1-conv decoder. This module
is the straightforward (unfused) implementation used for parity checks and
fine-tuning; ``inference.fused`` holds the fast eval-only path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from close_blender.errors import CheckpointError
from close_blender.labels import N_CLASSES


@dataclass(frozen=True)
class CloseNetConfig:
    """Architecture hyper-parameters (defaults: the published CloSe-Net)."""

    k: int = 40
    in_dim: int = 9
    use_tnet: bool = True
    point_emb: int = 1024
    garment_emb: int = 64
    n_heads: int = 4
    n_garments: int = N_CLASSES
    decoder_channels: tuple[int, ...] = (512, 512, 512, 512, 256)
    n_classes: int = N_CLASSES
    slope: float = 0.2
    dropout: float = 0.5
    max_norm: float | None = 2.0  # stored for fidelity; the codebook is read directly
    edge_channels: tuple[int, ...] = field(default=(64, 64, 64), repr=False)

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_heads < 1 or self.garment_emb % self.n_heads:
            raise CheckpointError(
                f"invalid CloSe-Net config (k={self.k}, heads={self.n_heads}, "
                f"garment embedding={self.garment_emb})",
                "k and heads must be >= 1 and the embedding divisible by the heads")
        if self.in_dim != 9:
            raise CheckpointError(f"input dimension {self.in_dim} is not supported",
                                  "CloSe-Net takes xyz, rgb and normals (9 channels)")

    @property
    def body_dim(self) -> int:
        return 3

    @property
    def point_feature_dim(self) -> int:
        return self.point_emb + sum(self.edge_channels)

    @property
    def decoder_input(self) -> int:
        return self.point_feature_dim + self.body_dim + self.garment_emb

    @classmethod
    def from_model_arch(cls, model_arch: dict[str, Any], n_classes: int = N_CLASSES) -> CloseNetConfig:
        """Build from the ``model_arch`` section of a published ``_cfg.yaml``."""
        try:
            pc, garm, dec = model_arch["pc_enc"], model_arch["garm_enc"], model_arch["segm_dec"]
            if pc.get("name", "dgcnn") != "dgcnn" or dec.get("name", "mlp") != "mlp":
                raise CheckpointError(
                    f"unsupported encoder/decoder ({pc.get('name')}, {dec.get('name')})",
                    "only the published dgcnn + mlp CloSe-Net is supported")
            cfg = cls(
                k=int(pc["k"]), in_dim=int(pc.get("inp_dim", 9)),
                use_tnet=bool(pc.get("use_tnet", True)), point_emb=int(pc["emb_dim"]),
                garment_emb=int(garm.get("gar_emb_dim", garm.get("emb_dim"))),
                n_heads=int(garm["n_heads"]), n_garments=int(garm.get("n_embeddings", n_classes)),
                decoder_channels=tuple(int(c) for c in dec["channels"]),
                n_classes=int(n_classes), slope=float(dec.get("slope", 0.2)),
                dropout=float(dec.get("dropout", 0.5)),
                max_norm=None if garm.get("max_norm") is None else float(garm["max_norm"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the config's model_arch is incomplete or malformed ({exc!r})",
                                  "use the _cfg.yaml that ships beside the weights") from None
        if "segm_input" in dec and int(dec["segm_input"]) != cfg.decoder_input:
            raise CheckpointError(
                f"model_arch says the decoder input is {dec['segm_input']} channels but the "
                f"encoders give {cfg.decoder_input}", "the config is inconsistent")
        return cfg

    def to_model_arch(self) -> dict[str, Any]:
        """The published ``model_arch`` section for this config."""
        return {
            "garm_enc": {"dropout": 0.0, "emb_dim": self.garment_emb,
                         "gar_emb_dim": self.garment_emb, "key_mask": True,
                         "layer_norm": "add_norm", "max_norm": self.max_norm,
                         "n_embeddings": self.n_garments, "n_heads": self.n_heads,
                         "name": "attention_garm"},
            "pc_enc": {"channels_sum": sum(self.edge_channels), "emb_dim": self.point_emb,
                       "inp_dim": self.in_dim, "k": self.k, "name": "dgcnn",
                       "use_tnet": self.use_tnet},
            "part_enc": {"name": "canon_encoder"},
            "segm_dec": {"channels": list(self.decoder_channels), "dropout": self.dropout,
                         "emb_dim": self.decoder_channels[0], "name": "mlp",
                         "segm_input": self.decoder_input, "slope": self.slope},
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        d["edge_channels"] = list(self.edge_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CloseNetConfig:
        try:
            d = dict(d)
            for key in ("decoder_channels", "edge_channels"):
                if key in d:
                    d[key] = tuple(int(c) for c in d[key])
            return cls(**d)
        except TypeError as exc:
            raise CheckpointError(f"the stored architecture config is malformed ({exc})",
                                  "the checkpoint metadata may be from another version") from None


# ---------------------------------------------------------------- building blocks


class ConvBNAct(nn.Module):
    """1x1 convolution (no bias), BatchNorm, LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, dims: int, slope: float) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.conv = conv(c_in, c_out, kernel_size=1, bias=False)
        self.bn = bn(c_out)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class LinearBNAct(nn.Module):
    """Linear (no bias), BatchNorm1d, LeakyReLU on (B, C) vectors."""

    def __init__(self, c_in: int, c_out: int, slope: float) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.linear(x)))


def knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, N, k) of the k nearest points (self included) in x (B, C, N)."""
    inner = torch.matmul(x.transpose(2, 1), x)
    sq = (x * x).sum(dim=1, keepdim=True)
    neg_dist = 2 * inner - sq - sq.transpose(2, 1)
    return neg_dist.topk(k=k, dim=-1).indices


def gather_neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, C, N) at idx (B, N, k) -> (B, C, N, k)."""
    b, c, n = x.shape
    k = idx.shape[-1]
    flat = idx.reshape(b, 1, n * k).expand(b, c, n * k)
    return torch.gather(x, 2, flat).view(b, c, n, k)


def graph_features(x: torch.Tensor, k: int) -> torch.Tensor:
    """Edge features concat(x_j - x_i, x_i) (B, 2C, N, k) over the k-NN graph of x."""
    idx = knn(x, k)
    neighbours = gather_neighbours(x, idx)
    centre = x.unsqueeze(-1).expand_as(neighbours)
    return torch.cat([neighbours - centre, centre], dim=1)


# ---------------------------------------------------------------- the network


class SpatialTransform(nn.Module):
    """T-Net: a 3x3 matrix per cloud from the k-NN graph of xyz."""

    def __init__(self, cfg: CloseNetConfig) -> None:
        super().__init__()
        s = cfg.slope
        self.edge1 = ConvBNAct(6, 64, 2, s)
        self.edge2 = ConvBNAct(64, 128, 2, s)
        self.point = ConvBNAct(128, 1024, 1, s)
        self.fc1 = LinearBNAct(1024, 512, s)
        self.fc2 = LinearBNAct(512, 256, s)
        self.out = nn.Linear(256, 9)

    def forward(self, edges: torch.Tensor) -> torch.Tensor:
        x = self.edge2(self.edge1(edges)).amax(dim=-1)
        x = self.point(x).amax(dim=-1)
        return self.out(self.fc2(self.fc1(x))).view(-1, 3, 3)


class EdgeConv(nn.Module):
    """Graph features -> 1x1 conv stack -> max over neighbours."""

    def __init__(self, channels: list[int], slope: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvBNAct(a, b, 2, slope) for a, b in zip(channels[:-1], channels[1:], strict=False))

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        h = graph_features(x, k)
        for layer in self.layers:
            h = layer(h)
        return h.amax(dim=-1)


class PointEncoder(nn.Module):
    """DGCNN: T-Net, three EdgeConvs, a global feature; returns (features, X3)."""

    def __init__(self, cfg: CloseNetConfig) -> None:
        super().__init__()
        self.k = cfg.k
        s = cfg.slope
        e1, e2, e3 = cfg.edge_channels
        self.tnet = SpatialTransform(cfg) if cfg.use_tnet else None
        self.edge_convs = nn.ModuleList([
            EdgeConv([2 * cfg.in_dim, e1, e1], s),
            EdgeConv([2 * e1, e2, e2], s),
            EdgeConv([2 * e2, e3], s),
        ])
        self.global_conv = ConvBNAct(e1 + e2 + e3, cfg.point_emb, 1, s)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = points.transpose(1, 2)  # (B, 9, N)
        k = min(self.k, x.shape[-1])
        xyz = x[:, :3]
        if self.tnet is not None:
            t = self.tnet(graph_features(xyz, k))
            xyz = torch.bmm(xyz.transpose(1, 2), t).transpose(1, 2)
        h = torch.cat([xyz, x[:, 3:]], dim=1)
        feats = []
        for conv in self.edge_convs:
            h = conv(h, k)
            feats.append(h)
        local = torch.cat(feats, dim=1)
        g = self.global_conv(local).amax(dim=-1, keepdim=True)
        g = g.expand(-1, -1, local.shape[-1])
        return torch.cat([g, local], dim=1), feats[-1]


class GarmentEncoder(nn.Module):
    """Per-point attention over the codebook of the garments present in the scan."""

    def __init__(self, cfg: CloseNetConfig) -> None:
        super().__init__()
        d = cfg.garment_emb
        self.codebook = nn.Parameter(torch.zeros(cfg.n_garments, d))
        self.attn = nn.MultiheadAttention(d, cfg.n_heads, batch_first=True)
        self.proj = ConvBNAct(d, d, 1, cfg.slope)
        self.norm_a = nn.LayerNorm(d)
        self.norm_b = nn.LayerNorm(d)

    def forward(self, query: torch.Tensor, garments: torch.Tensor) -> torch.Tensor:
        """query (B, d, N), garments (B, n_garments) 0/1 -> (B, d, N)."""
        q = query.transpose(1, 2)
        kv = self.codebook.unsqueeze(0).expand(q.shape[0], -1, -1)
        a, _ = self.attn(q, kv, kv, key_padding_mask=garments == 0, need_weights=False)
        p = self.proj(a.transpose(1, 2)).transpose(1, 2)
        return self.norm_b(self.norm_a(q + p)).transpose(1, 2)


class Decoder(nn.Module):
    """1x1 conv stack to class logits; the last BN + LeakyReLU act on the logits."""

    def __init__(self, cfg: CloseNetConfig) -> None:
        super().__init__()
        chans = [cfg.decoder_input, *cfg.decoder_channels, cfg.n_classes]
        self.layers = nn.ModuleList(
            ConvBNAct(a, b, 1, cfg.slope) for a, b in zip(chans[:-1], chans[1:], strict=False))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.dropout(x)
        return x


class CloseNet(nn.Module):
    """points (B, N, 9), canon (B, N, 3), garments (B, 18) -> logits (B, 18, N)."""

    def __init__(self, cfg: CloseNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or CloseNetConfig()
        self.point_encoder = PointEncoder(self.config)
        self.garment_encoder = GarmentEncoder(self.config)
        self.decoder = Decoder(self.config)

    def forward(self, points: torch.Tensor, canon: torch.Tensor,
                garments: torch.Tensor) -> torch.Tensor:
        point_feats, x3 = self.point_encoder(points)
        garm = self.garment_encoder(x3, garments)
        return self.decoder(torch.cat([point_feats, canon.transpose(1, 2), garm], dim=1))
