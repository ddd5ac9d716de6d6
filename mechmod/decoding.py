"""Greedy continuation of the rows of a batch whose answer is not decided by
its first token (a one-letter piece "B" may begin "Blue" or "Black").

A :data:`Continuation` gives next-token logits after each row's prompt
followed by the tokens written so far; :func:`greedy` runs it, batched,
for the undecided rows only, a few tokens at most. Four ways to build one:

- :func:`over_cache`: the prompt forward's KV cache, selected to the
  undecided rows and extended by their written tokens (no prompt or image
  token is computed again);
- :func:`reforward`: the whole batch again with the written tokens
  appended on the right, through a ``next_logits`` callable. This is the
  hook for a forward with an intervention still applied (a patched or
  steered forward: :func:`mechmod.interventions.core.continuation`, which
  also keeps every edit on the prompt's positions, so that an edit at
  position ``-1`` stays on the answer position): every row stays in the
  batch and every prompt position keeps its index, so edits addressed to
  rows or prompt positions land where they did on the prompt. Image
  tensors are passed whole, which needs no per-family slicing;
- :func:`reencoded`: the undecided rows' prompts encoded again (no cache
  or batch kept, e.g. after :func:`mechmod.tracing.trace`): a text-only
  row's prompt once, then over its KV cache as :func:`over_cache`; a row
  with an image whole at each step, as :func:`reforward`;
- :func:`over_prefixes`: prompts that show an image, over shared image
  prefixes (:func:`mechmod.prefix.trace_shared`): each step runs the
  undecided rows' text tails with the written tokens over their image's
  prefix forward kept from the prompts' run, or, where none was kept, runs
  that prefix once for all the image's undecided rows first.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from mechmod.prefix import KeptPrefix, Prefix, cache_kwarg, cache_rows, rope_deltas, trace_shared

Continuation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(rows [b] long, written [b, k] long) -> next-token logits [b, V]``:
the logits after row ``rows[i]``'s prompt followed by ``written[i]``."""

NextLogits = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
"""``inputs -> [B, V]``: the next-token logits at the last position of a
batch given as ``model(**inputs)`` keyword arguments."""


def greedy(continuation: Continuation, first: torch.Tensor, rows: Sequence[int],
           done: Callable[[list[int]], bool], max_new_tokens: int, stop_ids=()) -> dict[int, list[int]]:
    """Write greedily after each row's first token ``first[row]``, for the
    ``rows`` given, one batched ``continuation`` call per step. A row stops
    when ``done(its tokens)`` holds, when it writes a token of ``stop_ids``
    (not kept) or after ``max_new_tokens`` more tokens. Returns
    ``{row: [first token, written tokens...]}``."""
    written = {int(r): [int(first[r])] for r in rows}
    going = [r for r in written if not done(written[r])]
    stop = {int(t) for t in stop_ids}
    for _ in range(max_new_tokens):
        if not going:
            break
        logits = continuation(torch.tensor(going, dtype=torch.long),
                              torch.tensor([written[r] for r in going], dtype=torch.long))
        still = []
        for r, token in zip(going, logits.argmax(dim=-1).tolist()):
            if token in stop:
                continue
            written[r].append(token)
            if not done(written[r]):
                still.append(r)
        going = still
    return written


def extend_inputs(inputs: Mapping[str, torch.Tensor], rows: torch.Tensor, written: torch.Tensor,
                  pad_id: int) -> dict[str, torch.Tensor]:
    """The batch with ``written`` [b, k] appended on the right of ``rows``
    (the other rows get ``pad_id``). Per-token integer tensors [B, T] grow
    with it: ``input_ids`` by the tokens, ``attention_mask`` by ones, any
    other (token type ids: text) by zeros; everything else is unchanged."""
    ids = inputs["input_ids"]
    B, T = ids.shape
    new = torch.full((B, written.shape[1]), int(pad_id), dtype=ids.dtype)
    new[rows.cpu()] = written.to(ids.dtype).cpu()
    out = dict(inputs)
    for name, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.shape != (B, T) or value.is_floating_point():
            continue
        fill = (new if name == "input_ids" else torch.ones_like(new) if name == "attention_mask"
                else torch.zeros_like(new))
        out[name] = torch.cat([value, fill.to(device=value.device, dtype=value.dtype)], dim=1)
    return out


def model_next_logits(model) -> NextLogits:
    """The plain forward of an HF model as a :data:`NextLogits`."""
    def next_logits(inputs):
        with torch.no_grad():
            return model(**inputs, logits_to_keep=1).logits[:, -1]
    return next_logits


def reforward(inputs: Mapping[str, torch.Tensor], next_logits: NextLogits, pad_id: int) -> Continuation:
    """A :data:`Continuation` that runs the whole batch ``inputs`` again with
    the written tokens appended (see the module docstring for why every
    row stays)."""
    def step(rows: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        logits = next_logits(extend_inputs(inputs, rows, written, pad_id))
        return logits[rows.to(logits.device)]
    return step


def reencoded(mllm, images: Sequence, descriptions: Sequence, questions: Sequence,
              batch_size: int = 8) -> Continuation:
    """A :data:`Continuation` for prompts given as :meth:`MLLM.encode`'s
    arguments (row i = ``images[i]``, ``descriptions[i]``, ``questions[i]``)
    when no cache was kept, encoding only the rows asked for, in batches of
    ``batch_size``. A text-only row's prompt runs once, the first time it is
    asked for, and its KV cache serves the later steps (:func:`over_cache`:
    only the written tokens are computed). A row with an image runs whole
    at each step, its written tokens appended (its cache would keep every
    image token of every row)."""
    forward = model_next_logits(mllm.model)
    cached: dict[int, tuple[Continuation, int]] = {}  # text-only row -> its batch's continuation, its row there

    def encode(part: list[int]):
        return mllm.encode([images[i] for i in part], [descriptions[i] for i in part], [questions[i] for i in part])

    def step(rows: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        asked = rows.tolist()
        out: list[torch.Tensor | None] = [None] * len(asked)
        with_image = [j for j, r in enumerate(asked) if images[r] is not None]
        for s in range(0, len(with_image), batch_size):
            js = with_image[s : s + batch_size]
            enc = encode([asked[j] for j in js])
            logits = forward(extend_inputs(enc.inputs, torch.arange(len(js)), written[js], pad_id=0)).float().cpu()
            for j, row in zip(js, logits):
                out[j] = row
        new = [r for r in asked if images[r] is None and r not in cached]
        for s in range(0, len(new), batch_size):
            part = new[s : s + batch_size]
            enc = encode(part)
            with torch.no_grad():
                prompt = mllm.model(**enc.inputs, use_cache=True, logits_to_keep=1)
            continuation = over_cache(mllm, enc.inputs, getattr(prompt, cache_kwarg(mllm.model)))
            cached.update((r, (continuation, i)) for i, r in enumerate(part))
        groups: dict[int, tuple[Continuation, list[int]]] = {}  # by continuation: the asked rows it serves
        for j, r in enumerate(asked):
            if images[r] is None:
                groups.setdefault(id(cached[r][0]), (cached[r][0], []))[1].append(j)
        for continuation, js in groups.values():
            logits = continuation(torch.tensor([cached[asked[j]][1] for j in js]), written[js]).float().cpu()
            for j, row in zip(js, logits):
                out[j] = row
        return torch.stack(out)
    return step


def over_cache(mllm, inputs: Mapping[str, torch.Tensor], cache) -> Continuation:
    """A :data:`Continuation` over ``cache``, the KV cache of the forward of
    ``inputs`` (``model(**inputs, use_cache=True)``); build it right after
    that forward (M-RoPE families keep that forward's position offsets on
    the model). The cache itself is never written: each step runs on a copy
    of the undecided rows' cache."""
    mask = inputs["attention_mask"]
    text_only = "pixel_values" not in inputs
    deltas = None if text_only else rope_deltas(mllm)
    mrope_text = text_only and mllm.adapter.rope_deltas_path is not None
    key = cache_kwarg(mllm.model)

    def step(rows: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        device = mask.device
        rows = rows.to(device)
        b, k = written.shape
        x = {"input_ids": written.to(device),
             "attention_mask": torch.cat([mask[rows], torch.ones(b, k, dtype=mask.dtype, device=device)], dim=1),
             key: cache_rows(cache, rows), "use_cache": True}
        if deltas is not None:  # M-RoPE: a row's text positions count its real tokens, offset by its delta
            start = mask[rows].sum(dim=1, keepdim=True).to(deltas.device)
            x["position_ids"] = (start + torch.arange(k, device=deltas.device)[None, :]
                                 + deltas.reshape(-1, 1)[rows.to(deltas.device)]).to(device)
        elif mrope_text:  # a text-only prompt counted every position, pads included: so do its written tokens
            T = mask.shape[1]  # (left alone, the model would add the offsets of its last image forward)
            x["position_ids"] = torch.arange(T, T + k, device=device)[None, :].expand(b, k)
        with torch.no_grad():
            return mllm.model(**x, logits_to_keep=1).logits[:, -1]
    return step


def over_prefixes(mllm, images: Sequence, descriptions: Sequence, questions: Sequence, batch_size: int = 8,
                  prefixes: Sequence[Prefix | None] | None = None,
                  kept: Sequence[KeptPrefix | None] | None = None) -> Continuation:
    """A :data:`Continuation` for prompts that show an image (row i =
    ``images[i]``, ``descriptions[i]`` or None, ``questions[i]``), over
    shared image prefixes: per step, the undecided rows are grouped by image
    (the same image object); each image's prefix forward kept from the
    prompts' run serves again (``kept``: row i's, or None), else runs once
    (``prefixes``: row i's prebuilt inputs, or None), and each row's text
    tail runs with its written tokens (:func:`mechmod.prefix.trace_shared`)."""
    def step(rows: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        groups: dict[int, list[int]] = {}  # image -> positions in ``rows``
        for j, r in enumerate(rows.tolist()):
            groups.setdefault(id(images[r]), []).append(j)
        heads = [int(rows[js[0]]) for js in groups.values()]
        traces = trace_shared(
            mllm, [images[r] for r in heads],
            [[(descriptions[int(rows[j])], questions[int(rows[j])], written[j].tolist()) for j in js]
             for js in groups.values()],
            batch_size=batch_size, prefixes=None if prefixes is None else [prefixes[r] for r in heads],
            reuse=None if kept is None else [kept[r] for r in heads])
        out = [None] * len(rows)
        for js, tr in zip(groups.values(), traces):
            for i, j in enumerate(js):
                out[j] = tr.logits[i]
        return torch.stack(out).float().cpu()
    return step
