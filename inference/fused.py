"""Fast eval-only CloSe-Net: the same function as :class:`CloseNet`, fewer operations.

What changes (none of it changes the result beyond float rounding):

* BatchNorm (eval) is folded into the preceding 1x1 conv / linear as a scale and
  a bias.
* Everything runs in rows layout (B, N, C), so every 1x1 conv is one large
  matrix product.
* The first layer of an EdgeConv is linear in ``(x_j - x_i, x_i)``:
  ``W [x_j - x_i; x_i] = W_a x_j + (W_b - W_a) x_i``, so both halves are computed
  once per point and only the per-point result is gathered over neighbours.
* A max over neighbours or points commutes with a following bias add and
  LeakyReLU (both increasing), so the max runs first, on the pre-activation,
  and bias + activation run on the small result; EdgeConv 3 (one layer) thus
  becomes a gather + max of per-point vectors.
* The global feature is constant over a chunk's points, so its share of the
  decoder's first layer is one matrix-vector product per chunk.
* The garment codebook's keys and values are projected once.

Input points (B, N, 9), canon (B, N, 3), garments (B, 18); output logits
(B, N, 18) (rows layout, unlike the plain module's (B, 18, N)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.closenet import CloseNet, ConvBNAct, LinearBNAct


def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d,
            bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') with ``bn(W x + bias) == W' x + b'`` in eval mode; W as (out, in)."""
    w = weight.reshape(weight.shape[0], -1).double()
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    new_b = (b - bn.running_mean.double()) * scale + bn.bias.double()
    return (w * scale[:, None]).float(), new_b.float()


def _folded(layer: ConvBNAct | LinearBNAct) -> tuple[torch.Tensor, torch.Tensor]:
    lin = layer.conv if isinstance(layer, ConvBNAct) else layer.linear
    return fold_bn(lin.weight.detach(), layer.bn)


KNN_BLOCK = 8  # row block size of the two-stage top-k


def topk_indices(d: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """Column indices of the k largest of the first n entries of each row of d.

    ``d`` (R, W) holds -inf beyond column n. For long rows the search runs in two
    stages. The columns are split into W / KNN_BLOCK groups, group g holding the
    columns g, g + G, g + 2G, ... (strided, so the group maxima are an elementwise
    max of KNN_BLOCK contiguous slices). The k groups with the largest maxima hold
    all of the k largest entries (an entry outside them would be smaller than k
    distinct group maxima), so the exact top k is the top k of those k groups'
    k * KNN_BLOCK entries. Both stages are small top-k calls, together about three
    times cheaper than one over the whole row.
    """
    rows, width = d.shape
    bs = KNN_BLOCK
    if n < bs * k or width % bs:
        return d.topk(k, dim=-1, sorted=False).indices
    groups = width // bs
    v = d.view(rows, bs, groups)
    best = v.amax(1).topk(k, dim=-1, sorted=False).indices  # (R, k) group ids
    cand = v.gather(2, best.unsqueeze(1).expand(rows, bs, k)).view(rows, bs * k)
    sel = cand.topk(k, dim=-1, sorted=False).indices
    return (sel // k) * groups + best.gather(1, sel % k)


def knn_rows(x: torch.Tensor, k: int, tile: int = 256) -> torch.Tensor:
    """k nearest (self included) of each point of x (N, C): indices (N, k).

    Points in 3-D on the CPU (the T-Net's graph) go through a k-d tree, about twice
    as fast as the brute-force search there and the same neighbours. Otherwise the
    same ranking as the reference (``2 x_i.x_j - |x_i|^2 - |x_j|^2``, largest
    first), by tiles of rows so the distance block stays in cache. Rows are padded
    with -inf (never chosen while N >= k): to a multiple of the block size for the
    two-stage search, and for short rows on CPU to 64 k columns, where torch's CPU
    topk switches to its faster partial sort.
    """
    n = x.shape[0]
    if x.shape[1] == 3 and x.device.type == "cpu" and n > k:
        from scipy.spatial import cKDTree

        a = x.detach().numpy()
        return torch.from_numpy(cKDTree(a).query(a, k)[1].astype(np.int64))
    sq = (x * x).sum(-1)
    if n >= KNN_BLOCK * k:
        width = -(-n // KNN_BLOCK) * KNN_BLOCK
    else:
        width = max(n, 64 * k) if x.device.type == "cpu" else n
    rows = min(tile, n)
    buf = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    if width > n:
        buf[:, n:] = float("-inf")
    out = torch.empty((n, k), dtype=torch.long, device=x.device)
    xt = x.t()
    for s in range(0, n, rows):
        e = min(n, s + rows)
        d = buf[: e - s]
        if width == n:  # write the distances in place, no extra pass
            torch.addmm(sq, x[s:e], xt, beta=-1.0, alpha=2.0, out=d).sub_(sq[s:e, None])
        else:
            d[:, :n] = torch.addmm(sq, x[s:e], xt, beta=-1.0, alpha=2.0).sub_(sq[s:e, None])
        out[s:e] = topk_indices(d, k, n)
    return out


class _EdgeFirst(nn.Module):
    """First EdgeConv layer split into a neighbour half and a centre half (BN folded)."""

    def __init__(self, layer: ConvBNAct) -> None:
        super().__init__()
        w, b = _folded(layer)
        c = w.shape[1] // 2
        self.register_buffer("w_nb", w[:, :c].t().contiguous())
        self.register_buffer("w_ct", (w[:, c:] - w[:, :c]).t().contiguous())
        self.register_buffer("bias", b)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point neighbour term (no bias) and centre term (with bias)."""
        return x @ self.w_nb, torch.addmm(self.bias, x.flatten(0, 1), self.w_ct).view(
            *x.shape[:2], -1)


class _Dense(nn.Module):
    """A folded 1x1 conv / linear in rows layout: y = x W^T + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("wt", weight.t().contiguous())
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch.addmm(self.bias, flat, self.wt) if bias else flat @ self.wt
        return out.view(*x.shape[:-1], -1)


def _dense(layer: ConvBNAct | LinearBNAct) -> _Dense:
    return _Dense(*_folded(layer))


class FusedCloseNet(nn.Module):
    """Eval-only fast CloSe-Net built from a plain :class:`CloseNet` (weights copied)."""

    def __init__(self, model: CloseNet) -> None:
        super().__init__()
        cfg = model.config
        self.k = cfg.k
        self.slope = cfg.slope
        self.tile = 256  # points per edge block (cache-sized)
        enc = model.point_encoder
        with torch.no_grad():
            self.use_tnet = enc.tnet is not None
            if self.use_tnet:
                t = enc.tnet
                self.t_edge1 = _EdgeFirst(t.edge1)
                self.t_edge2 = _dense(t.edge2)
                self.t_point = _dense(t.point)
                self.t_fc1 = _dense(t.fc1)
                self.t_fc2 = _dense(t.fc2)
                self.t_out = _Dense(t.out.weight.detach().clone(), t.out.bias.detach().clone())
            ec1, ec2, ec3 = enc.edge_convs
            self.e1a, self.e1b = _EdgeFirst(ec1.layers[0]), _dense(ec1.layers[1])
            self.e2a, self.e2b = _EdgeFirst(ec2.layers[0]), _dense(ec2.layers[1])
            self.e3a = _EdgeFirst(ec3.layers[0])
            self.glob = _dense(enc.global_conv)
            # garment encoder
            ge = model.garment_encoder
            attn = ge.attn
            d = attn.embed_dim
            self.n_heads = attn.num_heads
            w_in, b_in = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
            codebook = ge.codebook.detach()
            self.register_buffer("wq", w_in[:d].t().contiguous())
            self.register_buffer("bq", b_in[:d].clone())
            self.register_buffer("keys", codebook @ w_in[d:2 * d].t() + b_in[d:2 * d])
            self.register_buffer("values", codebook @ w_in[2 * d:].t() + b_in[2 * d:])
            self.attn_out = _Dense(attn.out_proj.weight.detach().clone(),
                                   attn.out_proj.bias.detach().clone())
            self.g_proj = _dense(ge.proj)
            self.register_buffer("na_w", ge.norm_a.weight.detach().clone())
            self.register_buffer("na_b", ge.norm_a.bias.detach().clone())
            self.register_buffer("nb_w", ge.norm_b.weight.detach().clone())
            self.register_buffer("nb_b", ge.norm_b.bias.detach().clone())
            self.eps = (ge.norm_a.eps, ge.norm_b.eps)
            # decoder: split the first layer into the global part and the per-point rest
            layers = model.decoder.layers
            w0, b0 = _folded(layers[0])
            n_glob = cfg.point_emb
            self.register_buffer("d0_glob", w0[:, :n_glob].t().contiguous())
            self.d0 = _Dense(w0[:, n_glob:].contiguous(), b0)
            self.dec = nn.ModuleList(_dense(layer) for layer in layers[1:])
        self.eval()

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu_(x, self.slope)

    def _edge_two(self, x: torch.Tensor, idx: torch.Tensor, first: _EdgeFirst,
                  second: _Dense) -> torch.Tensor:
        """Two-layer EdgeConv on one cloud x (N, C): the second layer runs per edge.

        Tiles of points keep the (tile, k, C) edge block in cache.
        """
        nb, ct = first.parts(x.unsqueeze(0))
        nb, ct = nb[0], ct[0]
        n, k = idx.shape
        c1, c2 = nb.shape[1], second.wt.shape[1]
        out = torch.empty((n, c2), dtype=x.dtype, device=x.device)
        rows = min(n, self.tile)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            h = nb.index_select(0, idx[s:e].reshape(-1)).view(e - s, k, c1)
            h.add_(ct[s:e].unsqueeze(1))
            self._act(h)
            torch.amax(torch.mm(h.view(-1, c1), second.wt).view(e - s, k, c2), dim=1,
                       out=out[s:e])
        out.add_(second.bias)
        return self._act(out)

    def _edge_one(self, x: torch.Tensor, idx: torch.Tensor, first: _EdgeFirst) -> torch.Tensor:
        """One-layer EdgeConv on one cloud: max of gathered per-point terms, then bias + act."""
        nb, ct = first.parts(x.unsqueeze(0))
        nb, ct = nb[0], ct[0]
        n, k = idx.shape
        out = torch.empty_like(ct)
        rows = min(n, self.tile)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            h = nb.index_select(0, idx[s:e].reshape(-1)).view(e - s, k, -1)
            torch.amax(h, dim=1, out=out[s:e])
        return self._act(out.add_(ct))

    def _point_features(self, cloud: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One cloud (N, 9) -> local features (N, 192) and global feature (1024,)."""
        n = cloud.shape[0]
        k = min(self.k, n)
        xyz = cloud[:, :3].contiguous()
        if self.use_tnet:
            t = self._edge_two(xyz, knn_rows(xyz, k), self.t_edge1, self.t_edge2)
            t = self._act(self.t_point(t, bias=False).amax(dim=0).add_(self.t_point.bias))
            t = self._act(self.t_fc2(self._act(self.t_fc1(t.unsqueeze(0)))))
            xyz = xyz @ self.t_out(t).view(3, 3)
        x0 = torch.cat([xyz, cloud[:, 3:]], dim=-1)
        x1 = self._edge_two(x0, knn_rows(x0, k), self.e1a, self.e1b)
        x2 = self._edge_two(x1, knn_rows(x1, k), self.e2a, self.e2b)
        x3 = self._edge_one(x2, knn_rows(x2, k), self.e3a)
        local = torch.cat([x1, x2, x3], dim=-1)
        g = self._act(self.glob(local, bias=False).amax(dim=0).add_(self.glob.bias))
        return local, g

    def _garments(self, q: torch.Tensor, garments: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        h = self.n_heads
        dh = d // h
        qp = (torch.addmm(self.bq, q.reshape(-1, d), self.wq) / math.sqrt(dh)).view(b, n, h, dh)
        keys = self.keys.view(-1, h, dh)
        scores = torch.einsum("bnhd,ghd->bhng", qp, keys)
        mask = (garments == 0).view(b, 1, 1, -1)
        scores = scores.masked_fill(mask, float("-inf")).softmax(-1)
        att = torch.einsum("bhng,ghd->bnhd", scores, self.values.view(-1, h, dh)).reshape(b, n, d)
        p = self._act(self.g_proj(self.attn_out(att)))
        out = F.layer_norm(q + p, (d,), self.na_w, self.na_b, eps=self.eps[0])
        return F.layer_norm(out, (d,), self.nb_w, self.nb_b, eps=self.eps[1])

    def forward(self, points: torch.Tensor, canon: torch.Tensor,
                garments: torch.Tensor) -> torch.Tensor:
        feats = [self._point_features(cloud) for cloud in points]
        local = torch.stack([f[0] for f in feats])  # (B, N, 192)
        g = torch.stack([f[1] for f in feats])  # (B, 1024)
        x3 = local[..., -self.e3a.w_nb.shape[1]:]
        garm = self._garments(x3, garments)
        h = self.d0(torch.cat([local, canon, garm], dim=-1))
        h.add_((g @ self.d0_glob).unsqueeze(1))
        self._act(h)
        for layer in self.dec:
            h = self._act(layer(h))
        return h
