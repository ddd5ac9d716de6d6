"""``mechmod organism``: train the model organism and print its behaviour card."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mechmod.cli import cli


@cli.group("organism")
def organism() -> None:
    """The tiny trained LLaVA shipped with mechmod (the default model)."""


@organism.command("train")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for the checkpoint.")
@click.option("--seed", default=0, show_default=True, type=int, help="Fixes initialisation and the data stream.")
@click.option("--steps", default=3000, show_default=True, type=int, help="Optimiser steps (fixes the schedule).")
@click.option("--threads", default=2, show_default=True, type=int, help="torch CPU threads.")
@click.option("--workers", default=2, show_default=True, type=int, help="Processes that pre-render the image pool.")
@click.option("--lr", default=1.5e-3, show_default=True, type=float)
@click.option("--max-minutes", default=None, type=float, help="Stop early (and say so) past this wall time.")
@click.option("--aux-weight", default=1.0, show_default=True, type=float,
              help="Weight of the auxiliary per-patch shape/colour loss on the vision tower (training aid).")
@click.option("--binding-weight", default=0.5, show_default=True, type=float,
              help="Weight of the attention-binding aid (head 0 of LM layers 1-2 attends to the asked shape).")
@click.option("--tiny", is_flag=True, help="A tiny architecture (smoke tests).")
@click.option("--card/--no-card", default=True, show_default=True, help="Evaluate and save card.json afterwards.")
@click.option("--device", default="cpu", show_default=True, help="Accepted for symmetry; training runs on CPU.")
def train_cmd(out, seed, steps, threads, workers, lr, max_minutes, aux_weight, binding_weight, tiny, card,
              device) -> None:
    """Train an organism from scratch (reproducible from --seed)."""
    from mechmod.models.organism.model import OrganismConfig
    from mechmod.organism.train import train

    cfg = OrganismConfig()
    if tiny:
        cfg = OrganismConfig(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                             vision_mlp=64, text_hidden=32, text_layers=1, text_heads=2, text_mlp=64)
    t0 = time.time()
    result = train(out, seed=seed, steps=steps, cfg=cfg, lr=lr, threads=threads, workers=workers,
                   log_every=max(1, min(100, steps // 10)), vocab_groups=300 if tiny else 3000,
                   max_minutes=max_minutes, aux_patch_weight=aux_weight,
                   binding_weight=binding_weight, binding_layers=(0,) if tiny else (1, 2), **({"pool_per_tier": (4,) * 14} if tiny else {}))
    click.echo(f"trained {result['info']['n_params']} parameters in {time.time() - t0:.0f} s -> {out}")
    if card:
        from mechmod.organism.evaluate import evaluate, format_card, save_card

        c = evaluate(out, n=20 if tiny else 200)
        save_card(c, Path(out) / "card.json")
        text = format_card(c)
        (Path(out) / "card.txt").write_text(text + "\n")
        click.echo(text)


@organism.command("eval")
@click.option("--model", "model", default=None, type=click.Path(file_okay=False),
              help="Checkpoint directory (default: the shipped organism).")
@click.option("--seed", default=None, type=int, help="Evaluation seed (default: the card's).")
@click.option("--n", default=200, show_default=True, type=int, help="Samples per tier (conflicts: 6 n).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the card JSON here.")
@click.option("--threads", default=2, show_default=True, type=int)
def eval_cmd(model, seed, n, json_out, threads) -> None:
    """Print the behaviour card of an organism checkpoint."""
    import torch

    from mechmod.models.organism import CHECKPOINT_DIR
    from mechmod.organism.evaluate import DEFAULT_EVAL_SEED, evaluate, format_card, save_card

    torch.set_num_threads(threads)
    card = evaluate(Path(model) if model else CHECKPOINT_DIR, seed=DEFAULT_EVAL_SEED if seed is None else seed, n=n)
    if json_out:
        save_card(card, json_out)
    click.echo(format_card(card))
