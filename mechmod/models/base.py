"""What every model family shares: the declarative :class:`Adapter` and the
loaded :class:`MLLM` that builds the three inputs of a conflict case.

An adapter is data, not logic: the HF model class, where the LM decoder
layers, final norm and unembedding live, the image placeholder, and the
fallback prompt format (used when neither the processor nor its tokenizer
has a chat template).
Adding a family is one file with one ``Adapter(...)`` (see ``llava.py``).

Prompt layout, the same in every family (the image first, so an image's
prefix is shared by all its prompts)::

    [template] [image tokens] description question [template] <answer here>

The answer position is the last prompt token; batches are left-padded so
it is index ``T - 1`` in every row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from mechmod.errors import MechmodError


@dataclass(frozen=True)
class Adapter:
    """Where things are in one family of HF multimodal models.

    ``prompt_format`` holds ``{image}`` (the processor's image placeholder,
    or nothing for a text-only prompt) and ``{text}``; it is used when the
    processor and its tokenizer have no chat template (tiny test models, the organism).

    Module paths are dotted attribute paths from the HF model, or from one
    decoder layer for ``attn_path``, ``mlp_path``, ``o_proj_path`` and the
    post-module norms: the norm applied to the attention / MLP output before
    it joins the residual stream (Gemma 3's ``post_attention_layernorm`` /
    ``post_feedforward_layernorm``; None where the output joins it as is,
    e.g. Llama, whose ``post_attention_layernorm`` is the MLP's input norm).
    ``n_heads_attr`` / ``head_dim_attr`` are dotted attributes of the HF
    config (``head_dim_attr`` None: d_model / heads). The self-check on load
    (:func:`mechmod.backends.self_check`) verifies every one of them."""

    family: str
    model_types: tuple[str, ...]
    model_class: str
    image_placeholder: str
    prompt_format: str
    description: str
    layers_path: str = "model.language_model.layers"
    final_norm_path: str = "model.language_model.norm"
    lm_head_path: str = "lm_head"
    embed_path: str = "model.language_model.embed_tokens"
    vision_path: str = "model.vision_tower"
    projector_path: str = "model.multi_modal_projector"
    attn_path: str = "self_attn"
    mlp_path: str = "mlp"
    o_proj_path: str = "self_attn.o_proj"
    post_attn_norm_path: str | None = None
    post_mlp_norm_path: str | None = None
    n_heads_attr: str = "text_config.num_attention_heads"
    head_dim_attr: str | None = "text_config.head_dim"
    image_token_attr: str = "image_token_id"
    # M-RoPE families keep per-prompt position offsets of the text after the
    # image ("rope deltas") on the model after a forward; the tail of a
    # cached prefix needs them (mechmod.prefix)
    rope_deltas_path: str | None = None
    # whether image tokens attend causally, like text (False: Gemma 3's image
    # blocks attend both ways, so no forward may start inside an image)
    causal_image: bool = True
    builtin: dict[str, str] = field(default_factory=dict)  # short name -> hub id

    def module(self, model: nn.Module, path: str) -> nn.Module:
        """The submodule at ``path``; a clear error listing what exists."""
        obj: Any = model
        for part in path.split("."):
            if not hasattr(obj, part):
                names = [n for n, _ in model.named_children()]
                deeper = sorted({n.rsplit(".", 1)[0] for n, _ in model.named_modules() if n.count(".") <= 3})[:40]
                raise MechmodError(
                    f"{self.family} adapter: {type(model).__name__} has no {path!r} (stopped at {part!r}); "
                    f"top-level modules: {names}; some module paths: {deeper}. The model's layout differs from "
                    f"what the adapter knows: fix mechmod/models/{self.family}.py"
                )
            obj = getattr(obj, part)
        if not isinstance(obj, nn.Module):
            raise MechmodError(f"{self.family} adapter: {path!r} of {type(model).__name__} is a {type(obj).__name__}, "
                               f"not a module; fix mechmod/models/{self.family}.py")
        return obj

    def config_int(self, config, attr: str) -> int:
        """The integer at dotted ``attr`` of an HF config; a clear error if absent."""
        value: Any = config
        for part in attr.split("."):
            value = getattr(value, part, None)
        if not isinstance(value, int):
            raise MechmodError(f"{self.family} adapter: the model config has no integer {attr!r} (found {value!r}); "
                               f"fix mechmod/models/{self.family}.py")
        return value


def pixel_digest(image) -> str:
    """A digest of a PIL image's size and RGB pixels (what the processor sees)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return hashlib.sha256(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()


def same_image(a, b) -> bool:
    """Whether two PIL images (or None) show the same pixels: the same
    object, else equal :func:`pixel_digest` (hashed only then)."""
    if a is None or b is None:
        return False
    return a is b or pixel_digest(a) == pixel_digest(b)


@dataclass(frozen=True)
class Encoded:
    """A batch of prompts ready for ``model(**inputs)``.

    ``answer_index`` [B]: the position whose next-token distribution is the
    answer (the last one, left padding). ``spans``: bool masks [B, T] for
    ``image``, ``description``, ``question``, ``template`` (chat format and
    padding excluded) and ``last``. ``images``: per row the image it shows
    (None: none), compared by :func:`same_image`."""

    inputs: dict[str, torch.Tensor]
    answer_index: torch.Tensor
    spans: dict[str, torch.Tensor]
    prompts: tuple[str, ...]
    images: tuple[Any, ...] = ()

    def __post_init__(self):
        ids = self.inputs["input_ids"]
        if ids.ndim != 2 or self.answer_index.shape != (ids.shape[0],):
            raise ValueError(f"Encoded: input_ids {tuple(ids.shape)} vs answer_index {tuple(self.answer_index.shape)}")
        for name, mask in self.spans.items():
            if mask.shape != ids.shape:
                raise ValueError(f"Encoded: span {name!r} has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}")

    @property
    def batch_size(self) -> int:
        return self.inputs["input_ids"].shape[0]


class MLLM:
    """A loaded multimodal model with its adapter.

    Slots: ``model`` (HF), ``processor``, ``tokenizer``, ``adapter``,
    ``name``, ``family``, ``device``, ``dtype``, ``n_layers``, ``d_model``,
    ``layers`` (LM decoder ModuleList), ``final_norm``, ``lm_head``,
    ``image_token_id``, ``n_heads``, ``head_dim``."""

    def __init__(self, model: nn.Module, processor, adapter: Adapter, name: str):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.adapter = adapter
        self.name = name
        self.family = adapter.family
        self.layers = adapter.module(model, adapter.layers_path)
        self.final_norm = adapter.module(model, adapter.final_norm_path)
        self.lm_head = adapter.module(model, adapter.lm_head_path)
        self.embed = adapter.module(model, adapter.embed_path)
        if not isinstance(self.layers, nn.ModuleList) or len(self.layers) == 0:
            raise MechmodError(f"{name}: {adapter.layers_path} is {type(self.layers).__name__}, not a ModuleList of decoder layers")
        self.image_token_id = _image_token_id(model, processor, adapter)
        # the processor's chat template, else the tokenizer's (Gemma 3 may ship it in tokenizer_config.json only)
        self._template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self._chat = bool(self._template)

    # ------------------------------------------------------------ slots
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.lm_head.weight.shape[1]

    @property
    def n_heads(self) -> int:
        """Attention heads per decoder layer (the adapter's ``n_heads_attr``)."""
        return self.adapter.config_int(self.model.config, self.adapter.n_heads_attr)

    @property
    def head_dim(self) -> int:
        """Width of one head's output (``head_dim_attr``, else d_model / heads)."""
        if self.adapter.head_dim_attr is None:
            return self.d_model // self.n_heads
        return self.adapter.config_int(self.model.config, self.adapter.head_dim_attr)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def __repr__(self) -> str:
        return (f"MLLM({self.name!r}, family={self.family}, layers={self.n_layers}, d_model={self.d_model}, "
                f"device={self.device}, dtype={self.dtype})")

    # ---------------------------------------------------------- prompts
    def prompt(self, text: str, with_image: bool) -> str:
        """The chat prompt for ``text`` (image first when ``with_image``)."""
        if self._chat:
            content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      chat_template=self._template, add_generation_prompt=True,
                                                      tokenize=False)
        image = self.adapter.image_placeholder if with_image else ""
        return self.adapter.prompt_format.format(image=image, text=text)

    def case_prompt(self, description: str | None, question: str, with_image: bool) -> str:
        """The chat prompt of one case: its description (if any) then its question."""
        return self.prompt(" ".join(p for p in (description or "", question) if p), with_image)

    def encode(self, images: Sequence[Any | None], descriptions: Sequence[str | None],
               questions: Sequence[str], device: str | torch.device | None = None) -> Encoded:
        """Inputs for a batch of cases, on ``device`` (default the model's;
        mechmod.loader's workers build them on the CPU). Row i is vision-only
        (image, no description), text-only (description, no image) or
        multimodal (both); a batch must be all with image or all without."""
        n = len(questions)
        if not (len(images) == len(descriptions) == n) or n == 0:
            raise MechmodError(f"encode: {len(images)} images, {len(descriptions)} descriptions, {n} questions; "
                               "give one of each per case (None for a missing modality)")
        has_img = [im is not None for im in images]
        if any(has_img) and not all(has_img):
            raise MechmodError("encode: a batch mixes prompts with and without an image; encode them separately")
        with_image = has_img[0]
        pieces = [(d or "", q) for d, q in zip(descriptions, questions)]
        prompts = [self.case_prompt(d, q, with_image) for d, q in pieces]
        kw: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
        bos = self.tokenizer.bos_token
        if bos and all(p.startswith(bos) for p in prompts):  # the chat template wrote BOS (Gemma): not twice
            kw["add_special_tokens"] = False
        rgb = [im.convert("RGB") if im is not None else None for im in images]
        if with_image:
            kw["images"] = [[im] for im in rgb]  # one image per prompt (Gemma 3 needs the nesting)
        try:
            batch = self.processor(**kw)
        except (ValueError, TypeError) as err:
            raise MechmodError(f"{self.name}: the processor refused the batch ({err})") from err
        inputs = {k: v.to(device or self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        ids = inputs["input_ids"]
        spans = self._spans(ids.cpu(), prompts, pieces)
        answer_index = torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
        return Encoded(inputs=inputs, answer_index=answer_index, spans=spans, prompts=tuple(prompts),
                       images=tuple(images))

    def tail(self, prompt: str, description: str = "", question: str = "") -> tuple[list[int], list[str]]:
        """The prompt's tokens after the image placeholder (all of them for a
        text-only prompt) and what each is: 'description', 'question' or
        'template'.

        The placeholder is a special token, so this text tokenizes the same
        whether the processor expanded it to 1 or 576 copies: these are the
        last tokens of the processor's row. Offsets say which piece a token
        belongs to (a token's leading space, e.g. SentencePiece's "▁what",
        does not count as outside its piece)."""
        ph = self.adapter.image_placeholder
        cut = prompt.rfind(ph) + len(ph) if ph and ph in prompt else 0
        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        kept = [(t, a, b) for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if a >= cut]
        q_start = prompt.rfind(question) if question else -1
        d_start = prompt.rfind(description, cut, q_start if q_start >= 0 else len(prompt)) if description else -1
        kinds = []
        for _, a, b in kept:
            kind = "template"
            if b > a:
                a = next((j for j in range(a, b) if not prompt[j].isspace()), a)  # a space inside a piece counts
                if q_start >= cut and a >= q_start and b <= q_start + len(question):
                    kind = "question"
                elif d_start >= cut and a >= d_start and b <= d_start + len(description):
                    kind = "description"
            kinds.append(kind)
        return [t for t, _, _ in kept], kinds

    def _spans(self, ids: torch.Tensor, prompts: list[str], pieces: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Masks of the image, description and question tokens (left padding:
        each prompt's :meth:`tail` is the end of its row)."""
        B, T = ids.shape
        image = ids == self.image_token_id
        desc = torch.zeros(B, T, dtype=torch.bool)
        ques = torch.zeros(B, T, dtype=torch.bool)
        pad = self.tokenizer.pad_token_id
        attn = ids != pad if pad is not None else torch.ones_like(ids, dtype=torch.bool)
        for i, (prompt, (d, q)) in enumerate(zip(prompts, pieces)):
            tail, kinds = self.tail(prompt, d, q)
            start = T - len(tail)
            if start < 0 or ids[i, start:].tolist() != tail:
                raise MechmodError(f"{self.name}: cannot align the text of prompt {i} with the processor's tokens "
                                   f"(the text after {self.adapter.image_placeholder!r} tokenizes differently); "
                                   f"{self.family} adapter")
            for k, kind in enumerate(kinds):
                if kind == "question":
                    ques[i, start + k] = True
                elif kind == "description":
                    desc[i, start + k] = True
        last = torch.zeros(B, T, dtype=torch.bool)
        last[:, -1] = True
        template = attn & ~image & ~desc & ~ques
        return {"image": image, "description": desc, "question": ques, "template": template, "last": last}


def _image_token_id(model: nn.Module, processor, adapter: Adapter) -> int:
    for obj in (model.config, processor):
        value = getattr(obj, adapter.image_token_attr, None)
        if isinstance(value, int):
            return value
    tid = processor.tokenizer.convert_tokens_to_ids(adapter.image_placeholder)
    if not isinstance(tid, int) or tid == processor.tokenizer.unk_token_id:
        raise MechmodError(f"{adapter.family}: cannot find the image token id (config.{adapter.image_token_attr}, "
                           f"or token {adapter.image_placeholder!r} in the tokenizer)")
    return tid
