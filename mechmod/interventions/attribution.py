"""Direct logit attribution of the choice: how much the embedding, each
layer's attention and MLP, and each head add to LD = logit(answer_text) -
logit(answer_vision) at the answer position of the multimodal prompt.

The final norm's scale is frozen at that position, which makes the logit
difference linear in the residual stream: LD = h . d with d = g * (W_U[text]
- W_U[vision]) / rms(h) (g: the norm's gain, Gemma's 1 + weight included;
logits before any soft-capping). The residual stream h is the embedding
plus every layer's attention and MLP contributions as added to it (site
``*_contrib``: after a family's post-module norms), so each part's share is
its contribution . d. A head's share is its slice of ``z`` through its
columns of o_proj, and through the attention's post-norm with that norm's
scale frozen too; o_proj's bias, where there is one, is the ``attn_bias``
row, so the heads of a layer sum to its ``attn`` row. A norm is frozen as
``norm(x) = x * scale``: scale-only norms (RMSNorm) only; a centring norm
is refused. ``total`` is the model's own LD (its final norm and lm_head in
its dtype); the parts are computed in float32, and ``residual`` = total -
their sum (rounding; a column, e.g. for bf16)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mechmod.answers import LabelSet
from mechmod.backends import Site, unembed
from mechmod.errors import MechmodError
from mechmod.interventions.clean import CleanCases
from mechmod.interventions.core import forward
from mechmod.stats import bootstrap_mean_ci

COLUMNS = ["case_id", "layer", "component", "head", "contribution", "residual"]


@dataclass(frozen=True)
class Attribution:
    """Per case (rows of one batch), float32 on CPU: ``embed`` [B];
    ``attn``, ``attn_bias``, ``mlp`` [B, L]; ``heads`` [B, L, H]; ``total`` [B]."""

    embed: torch.Tensor
    attn: torch.Tensor
    attn_bias: torch.Tensor | None
    heads: torch.Tensor
    mlp: torch.Tensor
    total: torch.Tensor

    @property
    def parts(self) -> torch.Tensor:
        """The sum of the parts per case [B]."""
        bias = 0 if self.attn_bias is None else self.attn_bias.sum(1)
        return self.embed + self.attn.sum(1) + bias + self.mlp.sum(1)

    @property
    def residual(self) -> torch.Tensor:
        return self.total - self.parts

    def rows(self, case_ids) -> pd.DataFrame:
        """The long table: one row per case and part (COLUMNS)."""
        B, L, H = self.heads.shape
        ids = np.asarray(case_ids, dtype=object)
        res = self.residual.numpy()
        none = np.full(B, -1)
        blocks = [(none, "embed", none, self.embed), (none, "total", none, self.total)]
        for name, x in (("attn", self.attn), ("attn_bias", self.attn_bias), ("mlp", self.mlp)):
            if x is not None:
                blocks.append((np.tile(np.arange(L), B), name, np.full(B * L, -1), x.reshape(-1)))
        blocks.append((np.tile(np.repeat(np.arange(L), H), B), "head", np.tile(np.arange(H), B * L),
                       self.heads.reshape(-1)))
        frames = []
        for layer, comp, head, x in blocks:
            k = len(layer) // B
            frames.append(pd.DataFrame({"case_id": np.repeat(ids, k), "layer": layer, "component": comp, "head": head,
                                        "contribution": x.numpy().astype(np.float32), "residual": np.repeat(res, k)}))
        return pd.concat(frames, ignore_index=True)[COLUMNS]


def frozen_scale(norm: torch.nn.Module, x: torch.Tensor, where: str) -> torch.Tensor:
    """[B, D] float32 ``scale`` with ``norm(x) = x * scale`` per row (the
    norm's gain over the row's rms), from a float32 copy of the norm: the
    gain read off a constant input, the row factor by least squares (so no
    epsilon attribute is needed). Refuses a norm that is not scale-only."""
    f32 = copy.deepcopy(norm).float()
    x = x.float().to(next(f32.parameters()).device)
    with torch.no_grad():
        gain = f32(torch.full((1, x.shape[-1]), 1e3, device=x.device))[0]
        y = f32(x)
    xg = x * gain
    row = (y * xg).sum(-1, keepdim=True) / (xg * xg).sum(-1, keepdim=True).clamp_min(1e-30)
    scale = gain * row
    err = (y - x * scale).norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-30)
    if float(err.max()) > 1e-4:
        raise MechmodError(f"{where} ({type(norm).__name__}) is not a scale-only norm (RMSNorm): freezing its scale "
                           f"misses its output by {float(err.max()):.1e} of its size; direct logit attribution "
                           "supports RMSNorm models")
    return scale.cpu()


def answer_tokens(logits: torch.Tensor, labels: LabelSet, answers) -> torch.Tensor:
    """[B] the token standing for each row's answer in LD: of the answer's
    token variants (``LabelSet.logit_token_ids``), the one with the highest
    logit (as :func:`mechmod.interventions.patching.label_logit` takes it)."""
    out = []
    for row, a in zip(logits, answers):
        ids = torch.as_tensor(labels.logit_token_ids(a))
        out.append(int(ids[row[ids].argmax()]))
    return torch.tensor(out)


@torch.no_grad()
def attribute(mllm, encoded, labels: LabelSet, answer_text, answer_vision, backend: str = "nnsight") -> Attribution:
    """One forward of ``encoded`` (multimodal prompts): the attribution of
    each row's LD = logit(answer_text) - logit(answer_vision)."""
    L, a = mllm.n_layers, mllm.adapter
    comps = ("z", "attn", "attn_contrib", "mlp_contrib")
    reads = [(Site(0, "resid_in"), lambda x: x[:, -1])]
    reads += [(Site(layer, c), lambda x: x[:, -1]) for layer in range(L) for c in comps]
    reads += [(Site(L - 1, "resid"), lambda x: x[:, -1])]
    logits, got = forward(mllm, encoded.inputs, reads=reads, backend=backend)
    emb, last = got[0], got[-1]
    per = {(layer, c): got[1 + layer * len(comps) + i] for layer in range(L) for i, c in enumerate(comps)}

    t, v = answer_tokens(logits, labels, answer_text), answer_tokens(logits, labels, answer_vision)
    W_U = mllm.lm_head.weight
    u = (W_U[t.to(W_U.device)].float() - W_U[v.to(W_U.device)].float()).cpu()
    d = frozen_scale(mllm.final_norm, last, a.final_norm_path) * u
    own = unembed(mllm, last.to(mllm.device)).float().cpu()
    total = own.gather(1, t[:, None])[:, 0] - own.gather(1, v[:, None])[:, 0]

    def dot(x):
        return (x.float().cpu() * d).sum(-1)

    attn, bias, heads, mlp = [], [], [], []
    for layer in range(L):
        block = mllm.layers[layer]
        o_proj = a.module(block, a.o_proj_path)
        out = per[(layer, "attn")]
        post = (frozen_scale(a.module(block, a.post_attn_norm_path), out, f"layer {layer} {a.post_attn_norm_path}")
                if a.post_attn_norm_path else torch.ones(1, out.shape[-1]))
        dv = post * d  # what a vector entering the post-norm adds to LD, per unit
        z = per[(layer, "z")].float().cpu()  # [B, H, d_head]
        W = o_proj.weight.float().cpu().unflatten(1, (z.shape[1], z.shape[2]))  # [D, H, d_head]
        heads.append(torch.einsum("bhk,dhk,bd->bh", z, W, dv))
        b = (o_proj.bias.float().cpu() * dv).sum(-1) if o_proj.bias is not None else None
        bias.append(b)
        attn.append(dot(per[(layer, "attn_contrib")]) - (0 if b is None else b))
        mlp.append(dot(per[(layer, "mlp_contrib")]))
    return Attribution(embed=dot(emb), attn=torch.stack(attn, 1),
                       attn_bias=None if bias[0] is None else torch.stack(bias, 1),
                       heads=torch.stack(heads, 1), mlp=torch.stack(mlp, 1), total=total)


def attribute_cases(mllm, clean: CleanCases, batch_size: int = 8, backend: str = "nnsight") -> pd.DataFrame:
    """The attribution table (COLUMNS) of every conflict case of ``clean``
    whose two answers are labels of its candidates."""
    frames = []
    for labels, b, enc in clean.batches(mllm, batch_size):
        att = attribute(mllm, enc, labels, list(b["answer_text"]), list(b["answer_vision"]), backend)
        frames.append(att.rows(b["case_id"]))
    if not frames:
        raise MechmodError("attribution: no conflict case to attribute")
    return pd.concat(frames, ignore_index=True)


def summarize_attribution(rows: pd.DataFrame, clean: CleanCases, n_boot: int = 1000, top_k: int = 5,
                          seed: int = 0) -> dict:
    """Mean contribution (bootstrap 95% interval over cases) of the
    embedding and of each layer's attention and MLP, by region and by
    follow outcome; every head's mean; the ``top_k`` text- and
    vision-promoting heads (highest / lowest mean contribution)."""
    meta = clean.table.set_index("case_id")[["region", "follow"]]
    rows = rows.join(meta, on="case_id")
    L = int(rows["layer"].max()) + 1
    H = int(rows["head"].max()) + 1

    def profile(sub: pd.DataFrame) -> dict:
        wide = sub[sub["component"] != "head"].pivot_table(index="case_id", columns=["component", "layer"],
                                                           values="contribution")
        out = {}
        for comp in ("embed", "total"):
            out[comp] = bootstrap_mean_ci(wide[(comp, -1)], n_boot, seed)
        for comp in ("attn", "attn_bias", "mlp"):
            if (comp, 0) in wide:
                out[comp] = [bootstrap_mean_ci(wide[(comp, layer)], n_boot, seed) for layer in range(L)]
        return out

    heads = rows[rows["component"] == "head"]
    per_head = heads.pivot_table(index="case_id", columns=["layer", "head"], values="contribution")
    means = per_head.mean(0)
    order = means.sort_values()

    def top(keys) -> list[dict]:
        return [{"layer": int(layer), "head": int(head), "name": f"L{layer}H{head}",
                 **bootstrap_mean_ci(per_head[(layer, head)], n_boot, seed)} for layer, head in keys]

    text = [k for k in order.index[::-1][:top_k] if means[k] > 0]
    vision = [k for k in order.index[:top_k] if means[k] < 0]
    return {
        "n_cases": int(rows["case_id"].nunique()), "n_layers": L, "n_heads": H,
        "balance_point": clean.balance, "radius": clean.radius,
        "max_abs_residual": float(rows.groupby("case_id")["residual"].first().abs().max()),
        "by_region": {r: profile(sub) for r, sub in rows.groupby("region", sort=True)},
        "by_follow": {f: profile(sub) for f, sub in rows.groupby("follow", sort=True)},
        "all": profile(rows),
        "head_means": [[float(means.get((layer, h), np.nan)) for h in range(H)] for layer in range(L)],
        "top_heads": {"text": top(text), "vision": top(vision)},
    }
