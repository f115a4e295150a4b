"""The ``autothink`` command.  Heavy imports (torch, vLLM, DeepSpeed) happen inside commands so
that ``autothink --help`` answers at once."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help=(
        "AutoThink Services: train R1-style models to decide when to think (multi-stage GRPO) "
        "and serve them.\n\nStart with `autothink demo` (the main job on the embedded toy model)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and validate experiment configs and the bundled presets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
toy_app = typer.Typer(help="The CPU stand-in for an R1 model: synthetic task, tokenizer, tiny Qwen2.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")

SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override one value, e.g. --set optim.lr=1e-5 --set stages.0.steps=3."),
]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@config_app.command("presets")
def config_presets() -> None:
    """List the bundled presets (use a name wherever a config file is expected)."""
    from autothink.config import load_config, preset_names

    for name in preset_names():
        cfg = load_config(name, environ={})
        stages = ", ".join(f"{s.name}: {s.steps}×{s.prompts_per_batch}×{s.samples_per_prompt}" for s in cfg.stages)
        typer.echo(f"{name:8s} model={cfg.model.path}  [{stages}]")


@config_app.command("show")
def config_show(
    source: Annotated[str, typer.Argument(help="A YAML file or a preset name.")] = "toy",
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the fully resolved config (file, then AUTOTHINK_* environment, then --set)."""
    import yaml

    from autothink.config import ConfigError, load_config

    try:
        cfg = load_config(source, set_ or [])
    except ConfigError as e:
        _fail(str(e))
    data = cfg.model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@config_app.command("validate")
def config_validate(
    source: Annotated[str, typer.Argument(help="A YAML file or a preset name.")],
    set_: SetOpt = None,
) -> None:
    """Check a config; exit 2 with every broken rule listed if it is invalid."""
    from autothink.config import ConfigError, load_config

    try:
        cfg = load_config(source, set_ or [])
    except ConfigError as e:
        _fail(str(e))
    typer.echo(f"ok: {source} ({len(cfg.stages)} stages, {sum(s.steps for s in cfg.stages)} steps)")


@toy_app.command("build")
def toy_build(
    out: Annotated[str, typer.Option("--out", help="Folder to write the Hugging Face model and data into.")] = ".cache/toy-model",
    steps: Annotated[Optional[int], typer.Option(help="Warm-start (SFT) steps.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data, weights and sampling.")] = 0,
    eval_per_level: Annotated[int, typer.Option(help="Eval problems per difficulty level.")] = 64,
    force: Annotated[bool, typer.Option(help="Rebuild even if a build with the same settings exists.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Build tokenizer, model and data deterministically; print a JSON summary as the last line.

    The summary has per level: think_acc (standard prompt), no_think_acc (no-thinking prompt),
    ellipsis_acc and ellipsis_no_think_rate (ellipsis prompt), sampled with vLLM at temperature 0.6.
    """
    from pathlib import Path

    from autothink.toy.build import ToySettings, build, check_targets, set_threads

    overrides: dict = {"seed": seed, "eval_per_level": eval_per_level}
    if steps is not None:
        overrides["sft_steps"] = steps
    set_threads()
    summary = build(Path(out), ToySettings(**overrides), progress=not quiet, force=force)
    _print_level_table(summary["levels"])
    for name, ok in check_targets(summary).items():
        typer.echo(f"  [{'ok' if ok else 'MISSED'}] {name}", err=True)
    typer.echo(f"build time {summary['build_seconds']:.0f} s -> {out}", err=True)
    typer.echo(json.dumps(summary))


def _print_level_table(levels: list) -> None:
    typer.echo(f"{'level':>5} {'think_acc':>9} {'no_think_acc':>12} {'ellipsis_acc':>12} {'no_think_rate':>13}", err=True)
    for row in levels:
        typer.echo(
            f"{row['level']:>5} {row['think_acc']:>9.3f} {row['no_think_acc']:>12.3f} {row['ellipsis_acc']:>12.3f}"
            f" {row['ellipsis_no_think_rate']:>13.3f}",
            err=True,
        )


@app.command()
def selfcheck() -> None:
    """Check the installation and show the AutoThink reward rules on a worked example."""
    from autothink.selfcheck import run

    sys.exit(run())


@app.command()
def demo() -> None:
    """The main job: build the toy model, run the three AutoThink stages, evaluate, serve.

    Until the end-to-end demo lands this runs the self-check and says what is coming.
    """
    from autothink.selfcheck import run

    code = run()
    typer.echo(
        "\nThe full demo (toy model build -> stage 1/2/3 through the real services -> evaluation"
        " table -> gateway on localhost) is being built; see the README's roadmap."
    )
    sys.exit(code)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def gateway(ctx: typer.Context) -> None:
    """Serve a model: POST /generate and an OpenAI-compatible API (see `autothink gateway --help`).

    Example: autothink gateway --model .cache/toy-model --port 8000 [--api-key KEY]
    """
    from services.gateway.__main__ import main as gateway_main

    sys.exit(gateway_main(list(ctx.args)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
