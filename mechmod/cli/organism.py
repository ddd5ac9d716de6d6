"""``mechmod organism``: train and fine-tune the model organism, print its
behaviour card, measure the shape-blind shortcuts of its training images."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mechmod import names
from mechmod.cli import cli


@cli.group("organism")
def organism() -> None:
    """The tiny trained LLaVAs shipped with mechmod: organism (the default model), organism-text, organism-vision."""


def _common(f):
    """Options shared by train and finetune."""
    opts = [
        click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for the checkpoint."),
        click.option("--text-weight", default=1.0, show_default=True, type=float,
                     help="W of the conflict target p_v * p_t^W (1: product of experts; >1 text, <1 vision preference)."),
        click.option("--threads", default=2, show_default=True, type=int, help="torch CPU threads."),
        click.option("--workers", default=2, show_default=True, type=int, help="Processes that pre-render the image pool."),
        click.option("--pool-per-tier", default=None, type=int, help="Images per visual tier (default: 1000/500/250)."),
        click.option("--max-minutes", default=None, type=float, help="Stop early (and say so) past this wall time."),
        click.option("--save-every", default=500, show_default=True, type=int,
                     help="Save the checkpoint and optimiser state every this many steps (0: never)."),
        click.option("--resume", is_flag=True, help="Continue from the last saved step in --out."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
        click.option("--card/--no-card", default=True, show_default=True, help="Evaluate and save card.json afterwards."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _finish(out: str, result: dict, card: bool, tiny: bool, t0: float) -> None:
    info = result["info"]
    click.echo(f"trained {info['n_params']} parameters, {info['steps_done']} steps in {time.time() - t0:.0f} s "
               f"on {info['device']} -> {out}")
    if card:
        from mechmod import _io
        from mechmod.organism.evaluate import evaluate, format_card, save_card

        c = evaluate(out, n=20 if tiny else 200)
        save_card(c, Path(out) / "card.json")
        text = format_card(c)
        _io.write_text(Path(out) / "card.txt", text + "\n")
        click.echo(text)


@organism.command("train")
@_common
@click.option("--seed", default=0, show_default=True, type=int, help="Fixes initialisation and the data stream.")
@click.option("--steps", default=2400, show_default=True, type=int,
              help="Optimiser steps (fixes the schedule; the shipped base: 2400).")
@click.option("--lr", default=1.5e-3, show_default=True, type=float)
@click.option("--aux-weight", default=1.0, show_default=True, type=float,
              help="Weight of the auxiliary per-patch shape/colour loss on the vision tower (training aid).")
@click.option("--binding-weight", default=0.5, show_default=True, type=float,
              help="Weight of the attention-binding aid (head 0 of LM layers 1-2 attends to the asked shape).")
@click.option("--tiny", is_flag=True, help="A tiny architecture and pool (smoke tests).")
def train_cmd(out, text_weight, threads, workers, pool_per_tier, max_minutes, save_every, resume, device, card,
              seed, steps, lr, aux_weight, binding_weight, tiny) -> None:
    """Train an organism from scratch (reproducible from --seed)."""
    from mechmod.models.organism.model import OrganismConfig
    from mechmod.organism.data import DEFAULT_POOL
    from mechmod.organism.train import train

    cfg = OrganismConfig.tiny() if tiny else OrganismConfig()
    pool = (pool_per_tier or 4,) * 14 if tiny else ((pool_per_tier,) * 14 if pool_per_tier else DEFAULT_POOL)
    t0 = time.time()
    result = train(out, seed=seed, steps=steps, cfg=cfg, lr=lr, threads=threads, workers=workers,
                   log_every=max(1, min(100, steps // 10)), vocab_groups=300 if tiny else 3000,
                   max_minutes=max_minutes, aux_patch_weight=aux_weight, binding_weight=binding_weight,
                   binding_layers=(0,) if tiny else (1, 2), pool_per_tier=pool, save_every=save_every,
                   text_weight=text_weight, resume=resume, device=device)
    _finish(out, result, card, tiny, t0)


@organism.command("finetune")
@_common
@click.option("--from", "base", required=True, type=click.Path(file_okay=False, exists=True),
              help="The trained organism to start from.")
@click.option("--steps", default=300, show_default=True, type=int, help="Fine-tuning steps.")
@click.option("--seed", default=None, type=int,
              help="Data stream seed (default: the base's, so variants differ by --text-weight only).")
@click.option("--lr", default=3e-4, show_default=True, type=float)
def finetune_cmd(out, text_weight, threads, workers, pool_per_tier, max_minutes, save_every, resume, device, card,
                 base, steps, seed, lr) -> None:
    """Fine-tune a trained organism with a planted preference (--text-weight)."""
    from mechmod import _io
    from mechmod.organism.data import DEFAULT_POOL
    from mechmod.organism.train import train

    info = _io.read_json(Path(base) / "organism.json", "the base organism (--from)", dict)
    tiny = info["config"]["text_hidden"] <= 32
    pool = (pool_per_tier,) * 14 if pool_per_tier else ((4,) * 14 if tiny else DEFAULT_POOL)
    t0 = time.time()
    result = train(out, seed=info["seed"] if seed is None else seed, steps=steps, lr=lr,
                   warmup=max(1, min(20, steps // 10)), threads=threads, workers=workers,
                   log_every=max(1, min(50, steps // 10)), max_minutes=max_minutes,
                   aux_patch_weight=info.get("aux_patch_weight", 1.0), binding_weight=info.get("binding_weight", 0.5),
                   binding_layers=tuple(info.get("binding_layers", (1, 2))), pool_per_tier=pool,
                   save_every=save_every, text_weight=text_weight, init_from=base, resume=resume, device=device)
    _finish(out, result, card, tiny, t0)


@organism.command("shortcuts")
@click.option("--n", default=200, show_default=True, type=int, help="Images per tier to fit and, again, to score.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--policy", default="binding", show_default=True, type=click.Choice(names.DISTRACTOR_POLICIES),
              help="Distractor policy (binding: the organism's training images; paper: the study datasets).")
def shortcuts_cmd(n, seed, policy) -> None:
    """Shape-blind rules and a fitted shape-blind classifier on rendered images, per visual tier."""
    from mechmod.organism.shortcuts import training_shortcut_rates

    rates = training_shortcut_rates(n, n, seed=seed, policy=policy)
    names = list(next(iter(rates.values())))
    click.echo("dv  " + "  ".join(f"{k:>17}" for k in names))
    for dv, r in rates.items():
        click.echo(f"{dv:>2}  " + "  ".join(f"{r[k]:>17.3f}" for k in names))


@organism.command("eval")
@click.option("--model", "model", default="organism", show_default=True,
              help="A shipped organism's short name (organism, organism-text, organism-vision) or a checkpoint "
                   "directory.")
@click.option("--seed", default=None, type=int, help="Evaluation seed (default: the card's).")
@click.option("--n", default=200, show_default=True, type=int, help="Samples per tier (conflicts: 6 n).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the card JSON here.")
@click.option("--threads", default=2, show_default=True, type=int)
def eval_cmd(model, seed, n, json_out, threads) -> None:
    """Print the behaviour card of an organism checkpoint."""
    import torch

    from mechmod.models import resolve
    from mechmod.organism.evaluate import DEFAULT_EVAL_SEED, evaluate, format_card, save_card

    torch.set_num_threads(threads)
    card = evaluate(Path(resolve(model)), seed=DEFAULT_EVAL_SEED if seed is None else seed, n=n)
    if json_out:
        save_card(card, json_out)
    click.echo(format_card(card))
