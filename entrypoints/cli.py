"""The ``autothink`` command.  Heavy imports (torch, vLLM, DeepSpeed) happen inside commands so
that ``autothink --help`` answers at once."""

from __future__ import annotations

import contextlib
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
    ellipsis_acc, ellipsis_no_think_rate and ellipsis_direct_acc (ellipsis prompt; direct_acc in
    the table: its no-think samples' accuracy), sampled with vLLM at temperature 0.6.
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
    typer.echo(f"{'level':>5} {'think_acc':>9} {'no_think_acc':>12} {'ellipsis_acc':>12} {'no_think_rate':>13}"
               f" {'direct_acc':>10} {'think_tokens':>12} {'minimal_trace':>13}", err=True)
    for row in levels:
        direct = row.get("ellipsis_direct_acc")
        typer.echo(
            f"{row['level']:>5} {row['think_acc']:>9.3f} {row['no_think_acc']:>12.3f} {row['ellipsis_acc']:>12.3f}"
            f" {row['ellipsis_no_think_rate']:>13.3f} {float('nan') if direct is None else direct:>10.3f}"
            f" {row.get('think_tokens', float('nan')):>12.1f}"
            f" {row.get('minimal_think_tokens', float('nan')):>13.1f}",
            err=True,
        )


@app.command()
def selfcheck() -> None:
    """Check the installation and show the AutoThink reward rules on a worked example."""
    from autothink.selfcheck import run

    sys.exit(run())


def _load_run(source: str, set_: list[str] | None):
    from autothink.config import ConfigError, load_config

    try:
        return load_config(source, set_ or [])
    except ConfigError as e:
        _fail(str(e))


def _ensure_model(run, allow_weak: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Build the toy model when the experiment uses the toy task and the folder is not there yet;
    then refuse a toy build that missed its quality targets (a run on it cannot show the method:
    on a weak warm start the RL stages train on quietly and degrade), unless ``allow_weak``."""
    from pathlib import Path

    from autothink.toy.build import ToySettings, build, set_threads, weak_model_targets

    if not (Path(run.model.path) / "config.json").is_file():
        if run.data.source != "toy":
            _fail(f"model folder {run.model.path} not found")
        typer.echo(f"building the toy model into {run.model.path} (once; about 10 minutes on 2 cores) ...", err=True)
        set_threads()
        build(Path(run.model.path), ToySettings(), progress=True)
    missed = weak_model_targets(run.model.path)
    if missed:
        lines = "\n".join(f"  [MISSED] {name}" for name in missed)
        if allow_weak:
            typer.secho(f"warning: the toy model in {run.model.path} missed its targets (training anyway: --allow-weak-model):\n{lines}",
                        fg=typer.colors.YELLOW, err=True)
            return
        _fail(f"the toy model in {run.model.path} missed its targets, so a run on it cannot show what AutoThink does:\n{lines}\n"
              "Use the embedded toy (model.path: embedded:toy), rebuild with another seed (autothink toy build --seed N), "
              "or pass --allow-weak-model to train on it anyway (the degeneration alarm will likely fire).")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the same clean stop of every service started."""
    raise KeyboardInterrupt


def _train(run, opts, quiet_bar: bool = False):  # type: ignore[no-untyped-def]
    """Run the schedule through the services with a progress bar; exit 1 naming a dead service."""
    from tqdm import tqdm

    import signal

    from entrypoints.launcher import ServiceDied, train
    from autothink.schedule import plan

    # Ctrl-C must stop the stack even when a parent shell started us with SIGINT ignored (`cmd &`),
    # and so must SIGTERM (kill, a benchmark stopping a run, a container stop): without this the
    # default action ended the CLI at once and left redis, reward, rollout and gateway running
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    steps = plan(run.stages)
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(steps), desc="starting services", unit="step", disable=quiet_bar or not tty, dynamic_ncols=True)
    said = {"step": -1}

    def progress(status: dict) -> None:
        k = min(int(status.get("step", 0)), len(steps) - 1)
        if not tty and status.get("step", 0) != said["step"] and (status.get("step", 0) % 10 == 0 or status.get("finished")):
            said["step"] = status.get("step", 0)  # a log, not a terminal: one line every 10 steps
            last = status.get("last") or {}
            typer.echo(f"[progress] {steps[k].stage.name} step {said['step']}/{len(steps)} reward {last.get('reward_shaped', 0):.2f} "
                       f"think {last.get('think_rate', 0):.2f} acc {last.get('accuracy', 0):.2f}", err=True)
        bar.set_description(f"{steps[k].stage.name} step {status.get('step', 0)}/{len(steps)}")
        last = status.get("last") or {}
        if last:
            bar.set_postfix(reward=f"{last.get('reward_shaped', 0):.2f}", think=f"{last.get('think_rate', 0):.2f}",
                            acc=f"{last.get('accuracy', 0):.2f}", refresh=False)
        bar.n = int(status.get("step", 0))
        bar.refresh()

    try:
        stack = train(run, opts, progress=progress, write=tqdm.write)
    except ServiceDied as e:
        bar.close()
        typer.secho(f"error: {e}; the last lines of its log:", fg=typer.colors.RED, err=True)
        typer.echo(e.tail, err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        bar.close()
        typer.echo("interrupted; every service was stopped", err=True)
        raise typer.Exit(130) from None
    bar.n = len(steps)
    bar.close()
    return stack


ExperimentArg = Annotated[str, typer.Argument(help="A YAML file or a preset name (see `autothink config presets`).")]
AllowWeak = Annotated[bool, typer.Option(
    "--allow-weak-model", help="Train on a toy build that missed its quality targets (refused by default: such a run cannot show "
    "the method and tends to degenerate; the degeneration alarm watches for it).")]


@app.command()
def preflight(
    experiment: ExperimentArg = "toy",
    set_: SetOpt = None,
    problems: Annotated[int, typer.Option(help="Training problems to sample (drawn with the experiment's seed).")] = 64,
    samples: Annotated[int, typer.Option(help="Samples per problem.")] = 8,
    strict: Annotated[bool, typer.Option(help="Exit 1 when a warning is raised (default: report and exit 0).")] = False,
) -> None:
    """Can the model show what AutoThink does?  Sample part of the training set under the ellipsis
    prompt (stage 1's temperature and length cap) and report the no-think rate and accuracy per
    mode, overall and on the hardest third by level; warn when a mode is (almost) absent or when
    thinking is not better than answering directly on the hard part (then GRPO tends to reinforce
    wrong think traces, and the degeneration alarm fires).  Also run by `autothink up --preflight`."""
    from autothink.preflight import describe, run_preflight

    run = _load_run(experiment, set_)
    v = run_preflight(run, problems, samples, log=lambda m: typer.echo(m, err=True))
    for line in describe(v):
        typer.echo(line)
    typer.echo(json.dumps(v))
    if strict and not v["ok"]:
        raise typer.Exit(1)


@app.command()
def up(
    experiment: ExperimentArg = "toy",
    set_: SetOpt = None,
    host: Annotated[str, typer.Option(help="Gateway address (a non-loopback one needs --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    api_key: Annotated[str, typer.Option(help="Bearer key the gateway requires.")] = "",
    redis_url: Annotated[Optional[str], typer.Option(help="Use this Redis instead of starting a redis-server.")] = None,
    run_id: Annotated[str, typer.Option(help="Namespace of the run's Redis streams.")] = "up",
    learner_procs: Annotated[int, typer.Option(help="Learner processes (torchrun) on this machine.")] = 1,
    cpu_split: Annotated[Optional[bool], typer.Option(
        "--cpu-split/--no-cpu-split",
        help="Give the rollout service and the learner disjoint halves of the cores (AUTOTHINK_CPUS). "
             "Default: when they overlap (max_staleness >= 1) on a machine without a GPU.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the learner's checkpoint in the output folder.")] = False,
    quiet: Annotated[bool, typer.Option(help="Service logs to RUN/logs only, not to the console.")] = False,
    exit_when_trained: Annotated[bool, typer.Option(help="Stop everything once trained instead of serving.")] = False,
    allow_weak_model: AllowWeak = False,
    preflight_check: Annotated[bool, typer.Option("--preflight", help=(
        "Before training, sample 64 training problems under the ellipsis prompt and warn when thinking is not better "
        "than answering directly on their hard part (see `autothink preflight`); for models that are not toy builds."))] = False,
) -> None:
    """Start the whole system on this machine, train, then serve the result.

    redis-server, reward, rollout, learner and gateway run as child processes with health checks;
    their logs are prefixed per service (and kept in RUN/logs/); Ctrl-C stops them all.  Once the stages finish, the training services stop and the gateway keeps serving the final
    policy until Ctrl-C.  Exits non-zero naming the service if one dies.
    """
    from services.gateway.config import GatewayConfig, check_exposure
    from entrypoints.launcher import UpOptions, curl_example, serve_forever

    run = _load_run(experiment, set_)
    if (why := check_exposure(GatewayConfig(host=host, api_key=api_key))) is not None:
        _fail(why)
    _ensure_model(run, allow_weak_model)
    if preflight_check:
        from autothink.preflight import describe, run_preflight

        verdict = run_preflight(run, log=lambda m: typer.echo(m, err=True))
        for line in describe(verdict):
            typer.echo(line, err=True)
    opts = UpOptions(run_id=run_id, gateway_host=host, gateway_port=port, api_key=api_key, redis_url=redis_url,
                     learner_procs=learner_procs, cpu_split=cpu_split, resume=resume, echo=not quiet)
    stack = _train(run, opts)
    typer.echo(f"\ntrained: {len(stack.metrics)} steps, policy version {stack.final_version}; run folder {stack.run_dir}")
    typer.echo(f"the gateway serves it on {stack.gateway_url} (OpenAI API under {stack.gateway_url}/v1):\n")
    typer.echo(curl_example(stack.gateway_url, api_key))
    if exit_when_trained:
        stack.sup.stop_all()
        return
    typer.echo("\nCtrl-C to stop.")
    sys.exit(serve_forever(stack, typer.echo))


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Report folder.")] = "reports/demo",
    eval_per_level: Annotated[int, typer.Option(help="Toy eval problems per difficulty level.")] = 16,
    samples: Annotated[int, typer.Option(help="Samples per problem (the paper uses 8).")] = 8,
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    set_: SetOpt = None,
    serve: Annotated[bool, typer.Option(help="Keep serving the trained model afterwards (Ctrl-C stops).")] = True,
    allow_weak_model: AllowWeak = False,
) -> None:
    """The main job: toy model, three AutoThink stages, evaluation, report, then serving.

    Builds the toy model if needed, runs the stages through the real services, evaluates, writes
    a report, then serves the final model on localhost.  Prints a table shaped like the paper's Table 1 (standard / no-thinking / ellipsis prompts and
    AutoThink stages 1-3: accuracy and mean tokens per difficulty group, think rate, E-F1) and the
    think rate by difficulty before and after; writes report.json, report.md and PNG plots.
    """
    import time
    from pathlib import Path

    from entrypoints.launcher import UpOptions, curl_example, serve_forever

    t0 = time.time()
    run = _load_run("toy", set_)
    _ensure_model(run, allow_weak_model)
    typer.echo("training: redis + reward + rollout (vLLM) + learner (DeepSpeed) + gateway, logs in "
               f"{Path(run.output_dir).resolve() / 'logs'}", err=True)
    stack = _train(run, UpOptions(run_id="demo", gateway_port=port, echo=False))
    try:
        report_dir = _report(run, stack, Path(out), eval_per_level, samples, time.time() - t0)
    except BaseException:
        stack.sup.stop_all()
        raise
    typer.echo(f"\nreport: {report_dir.resolve()} (report.md, report.json, plots)   total {time.time() - t0:.0f} s")
    report = json.loads((report_dir / "report.json").read_text())
    missed = [name for name, t in report["targets"].items() if not t["met"]]
    if missed:
        typer.secho(f"\n{len(missed)} of {len(report['targets'])} targets missed: {'; '.join(missed)}.", fg=typer.colors.YELLOW, err=True)
        typer.echo(f"Where to look: the per-step metrics {stack.run_dir / 'metrics.jsonl'} (think accuracy, lengths and think "
                   f"rate by level per step; a 'degeneration' or 'mode_collapse' flag), the plots {report_dir.resolve()}/"
                   f"training_curves.png and think_rate_by_level.png, and the learner's log {stack.run_dir / 'logs' / 'learner.log'}.",
                   err=True)
    if not serve:
        stack.sup.stop_all()
        return
    typer.echo(f"\nthe gateway serves the final model on {stack.gateway_url}; try:\n\n{curl_example(stack.gateway_url)}\n\nCtrl-C to stop.")
    sys.exit(serve_forever(stack, typer.echo))


@contextlib.contextmanager
def _output_to(path):  # type: ignore[no-untyped-def]
    """Send this process's stdout and stderr -- file descriptors 1 and 2, which the engine
    processes vLLM spawns inherit, so their warnings and loading bars too -- to ``path`` for the
    block; yields a stream to the real terminal for the lines the user should see."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


def _report(run, stack, out, per_level: int, samples: int, elapsed: float):  # type: ignore[no-untyped-def]
    import json
    import os
    from pathlib import Path

    from autothink import report as R
    from autothink.evaluation import RowSpec, evaluate

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the table is what matters here
    model = str(Path(run.model.path).resolve())
    rows_in = [json.loads(x) for x in (Path(model) / "data" / "eval.jsonl").read_text().splitlines() if x.strip()]
    problems, seen = [], {}
    for r in rows_in:
        if seen.get(r["level"], 0) < per_level:
            seen[r["level"]] = seen.get(r["level"], 0) + 1
            problems.append(r)
    stages = stack.run_dir / "stages"
    specs = [RowSpec("standard prompt", model, "standard"), RowSpec("no-thinking prompt", model, "no_think"),
             RowSpec("ellipsis prompt (untrained)", model, "ellipsis")]
    specs += [RowSpec(f"AutoThink stage {i + 1}", str(stages / s.name), "ellipsis") for i, s in enumerate(run.stages)]
    temperature, max_tokens = 0.6, max(s.max_response_tokens for s in run.stages)
    eval_log = stack.run_dir / "logs" / "eval.log"
    typer.echo(f"evaluating (vLLM's own output goes to {eval_log}) ...", err=True)
    with _output_to(eval_log) as terminal:
        scored = evaluate(specs, problems, samples, temperature, max_tokens, log=lambda m: print(m, file=terminal, flush=True))
    rows = R.table(scored, lambda s: R.toy_group(s.level))
    before, after = rows[2], rows[-1]
    report = {
        "title": "AutoThink on the toy task",
        "subtitle": (f"{len(problems)} problems ({per_level} per level 1-8) x {samples} samples, temperature {temperature}, "
                     f"max {max_tokens} tokens; {len(stack.metrics)} GRPO steps; whole demo {elapsed:.0f} s before evaluation."),
        "rows": rows,
        "think_rate_by_level": {"before": R.think_by_level(before), "after": R.think_by_level(after)},
        "targets": R.check_targets(rows, after["method"], previous=rows[-2]["method"] if len(run.stages) > 1 else None),
        "settings": {"problems": len(problems), "samples": samples, "temperature": temperature, "max_tokens": max_tokens,
                     "steps": len(stack.metrics), "stages": [s.model_dump(mode="json") for s in run.stages]},
    }
    R.write(report, out, stack.metrics)
    _print_table(rows, report)
    return out


def _print_table(rows: list, report: dict) -> None:
    """The report's main table on the terminal: accuracy % and tokens per group, the overall
    accuracy with its 95 % bootstrap interval (~: inside the noise of the standard prompt's), think
    rate and the paper's E-F1; then the paper's Table 1 rows when the report has them."""
    groups = list(rows[0]["groups"])
    head = f"{'method':30s}" + "".join(f"{g:>22s}" for g in groups) + f"{'overall':>30s}{'think':>7s}{'E-F1':>7s}"
    typer.echo("\n" + head)
    typer.echo(f"{'':30s}" + "".join(f"{'acc':>11s}{'tokens':>11s}" for _ in groups) + f"{'acc [95% CI]':>22s}{'tokens':>8s}")
    for r in rows:
        cells = "".join(f"{r['groups'][g]['accuracy'] * 100:>11.1f}{r['groups'][g]['mean_tokens']:>11.1f}" if g in r["groups"] else f"{'-':>11s}{'-':>11s}"
                        for g in groups)
        ci = r.get("accuracy_ci")
        acc = f"{r['accuracy'] * 100:.1f}" + (f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci else "")
        acc += " ~" if (r.get("vs_baseline") or {}).get("inside_noise") else "  "
        ef1 = "-" if r["e_f1"] is None else f"{r['e_f1']:.1f}"
        typer.echo(f"{r['method']:30s}{cells}{acc:>22s}{r['mean_tokens']:>8.1f}{r['think_rate']:>7.2f}{ef1:>7s}")
    for ref in report.get("paper_reference") or []:
        ef1 = "-" if ref["e_f1"] is None else f"{ref['e_f1']:.1f}"
        typer.echo(f"{'paper: ' + ref['method']:30s}" + " " * 22 * len(groups) + f"{ref['accuracy']:>20.1f}  {ref['tokens']:>8d}{'':>7s}{ef1:>7s}")
    typer.echo("E-F1: the paper's (gains normalised by the standard - no-thinking gap, x100); ~: difference from the standard prompt inside the noise")
    tr = report.get("think_rate_by_level") or {}
    if not tr.get("before") or not tr.get("after"):
        return
    typer.echo("\nthink rate by level   " + " ".join(f"{'L' + lv:>5s}" for lv in tr["before"]))
    typer.echo("  before (ellipsis)   " + " ".join(f"{v:5.2f}" for v in tr["before"].values()))
    typer.echo("  after (stage 3)     " + " ".join(f"{v:5.2f}" for v in tr["after"].values()))
    typer.echo("\ntargets for the final model:")
    for name, t in report["targets"].items():
        typer.echo(f"  [{'ok' if t['met'] else 'MISSED'}] {name}: {t['value']} (goal {t['goal']})")


@app.command("eval")
def eval_(
    data_dir: Annotated[str, typer.Option(help="Folder with the benchmark files (math.json, aime.json, amc.json, minerva.json, olympiad_bench.json).")],
    model: Annotated[Optional[str], typer.Option(
        help="Local Hugging Face model folder; with --endpoint, the served model name (default: the server's first).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(
        help="Evaluate an OpenAI-compatible server instead of a local folder, e.g. http://127.0.0.1:8000 (this project's gateway: "
             "the prompt is chosen by chat_template_kwargs.thinking; other servers: raw /v1/completions of the rendered prompt).")] = None,
    api_key: Annotated[str, typer.Option(help="Bearer key for --endpoint.")] = "",
    api: Annotated[str, typer.Option(help="With --endpoint: auto (chat for this project's gateway, else completions), chat or completions.")] = "auto",
    benchmarks: Annotated[str, typer.Option(help="Comma-separated: math500,aime24,amc23,minerva,olympiadbench.")] = "math500,aime24,amc23,minerva,olympiadbench",
    prompts: Annotated[str, typer.Option(help="Comma-separated prompting strategies: standard,no_think,ellipsis.")] = "standard,no_think,ellipsis",
    samples: Annotated[int, typer.Option(help="Samples per problem (the paper: 16; 8 is a cheaper choice).")] = 16,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (the paper: 0.6).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling top-p (the paper: 0.95).")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Most response tokens, up to the model's context (the paper: 32768).")] = 32768,
    max_model_len: Annotated[Optional[int], typer.Option(help="Local engine context (default: max_tokens + 2048, or what the model allows).")] = None,
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", "-tp", help="GPUs per engine (vLLM tensor parallelism).")] = 1,
    data_parallel_size: Annotated[int, typer.Option("--data-parallel-size", "-dp", help="Engine replicas (vLLM data parallelism); uses tp x dp GPUs.")] = 1,
    concurrency: Annotated[Optional[int], typer.Option(help="Requests in flight (default: 32 to an endpoint, 1024 to the local engine).")] = None,
    retries: Annotated[int, typer.Option(help="With --endpoint: retries of a failed request (connection errors, 408, 429, 5xx).")] = 6,
    seed: Annotated[int, typer.Option(help="Base seed: sample j of problem i always gets the same seed, so reruns resume exactly.")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N problems of each benchmark.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap rounds for the 95 % intervals (seeded by --seed).")] = 1000,
    out: Annotated[str, typer.Option(help="Report folder; OUT/samples/ keeps every graded sample (rerun to resume).")] = "reports/eval",
    baseline: Annotated[Optional[str], typer.Option(
        help="Report folder of another run (the base model under standard,no_think) whose rows give E-F1 here, "
             "e.g. for a trained checkpoint evaluated with --prompts ellipsis.")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar (on a terminal).")] = True,
) -> None:
    """The paper's evaluation: benchmarks x prompts x samples, graded by the sandboxed grader.

    Defaults are the paper's (16 samples, temperature 0.6, top-p 0.95, 32768 tokens).  Each graded
    sample is appended to OUT/samples/BENCHMARK.PROMPT.jsonl with the settings that made it: rerun
    the same command to resume after a crash; other settings are refused rather than mixed.
    Writes report.json and report.md: accuracy with 95 % bootstrap intervals (differences from the
    standard prompt inside the noise marked ~), pass@k, think rate per benchmark and MATH500 level,
    tokens by mode, the paper's E-F1, and the paper's Table 1 rows for R1-Distill-Qwen-1.5B."""
    from pathlib import Path

    from autothink import report as R
    from autothink.eval_store import SettingsMismatch
    from autothink.evaluation import SamplingSettings, check_parallel, evaluate_benchmarks, load_benchmarks
    from autothink.prompting import STRATEGIES

    names = [b.strip() for b in benchmarks.split(",") if b.strip()]
    strategies = [p.strip() for p in prompts.split(",") if p.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        _fail(f"unknown prompt(s) {bad}; choose from {', '.join(STRATEGIES)}")
    if api not in ("auto", "chat", "completions"):
        _fail(f"--api {api!r}: choose auto, chat or completions")
    if samples < 1 or max_tokens < 1 or not 0 < top_p <= 1 or temperature < 0:
        _fail("--samples and --max-tokens must be >= 1, --top-p in (0, 1], --temperature >= 0")
    if endpoint is None:
        if model is None or not (Path(model) / "config.json").is_file():
            _fail(f"--model {model} is not a Hugging Face model folder (no config.json); or give --endpoint URL")
        try:
            check_parallel(tensor_parallel_size, data_parallel_size)
        except ValueError as e:
            _fail(str(e))
        from autothink.engine import context_length

        allowed = context_length(model, 1 << 30)  # type: ignore[arg-type]
        if max_model_len is None:
            max_model_len = min(allowed, max_tokens + 2048)
        if max_tokens >= max_model_len:
            _fail(f"--max-tokens {max_tokens} leaves no room for a prompt in a context of {max_model_len} (the model allows {allowed})")
    elif tensor_parallel_size != 1 or data_parallel_size != 1:
        _fail("--tensor-parallel-size and --data-parallel-size apply to a local model; the server at --endpoint has its own")
    base_report = None
    if baseline is not None:
        try:
            base_report = json.loads((Path(baseline) / "report.json").read_text())
        except (OSError, ValueError) as e:
            _fail(f"--baseline {baseline}: no readable report.json ({e})")
        if not {R.BASELINE, R.NO_THINK} <= {r.get("method") for r in base_report.get("rows", [])}:  # type: ignore[union-attr]
            _fail(f"--baseline {baseline}: its report has no '{R.BASELINE}' and '{R.NO_THINK}' rows (evaluate with --prompts standard,no_think)")
    try:
        loaded = load_benchmarks(data_dir, names, limit)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    problems = {n: [p for p in loaded if p["group"] == n] for n in names}
    typer.echo(f"{len(loaded)} problems from {', '.join(names)} x {samples} samples x {len(strategies)} prompts", err=True)
    sampling = SamplingSettings(temperature, top_p, max_tokens, seed)
    try:
        results, identity = evaluate_benchmarks(
            problems, strategies, samples, sampling, out, model=model, endpoint=endpoint, api_key=api_key, api=api,  # type: ignore[arg-type]
            max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
            concurrency=concurrency, retries=retries, progress=progress, log=lambda m: typer.echo(m, err=True))
    except SettingsMismatch as e:
        _fail(str(e))
    except RuntimeError as e:  # an endpoint that refused or kept failing; what was graded is kept
        _fail(f"{e} (the samples graded so far are kept in {Path(out) / 'samples'}; rerun to resume)")
    name_or_path = ""
    if endpoint is None:
        try:
            name_or_path = json.loads((Path(model) / "config.json").read_text()).get("_name_or_path", "")  # type: ignore[arg-type]
        except (OSError, ValueError):
            pass
    settings = {"model": identity, "benchmarks": names, "prompts": strategies, "samples": samples, "temperature": temperature,
                "top_p": top_p, "max_tokens": max_tokens, "seed": seed, "limit": limit,
                "problems": {n: len(p) for n, p in problems.items()}, "tensor_parallel_size": tensor_parallel_size,
                "data_parallel_size": data_parallel_size}
    report = R.benchmark_report(
        results, f"Evaluation of {model if endpoint is None else identity}",
        f"{', '.join(names)}; {samples} samples per problem, temperature {temperature}, top-p {top_p}, max {max_tokens} tokens"
        + (f"; first {limit} problems of each" if limit else ""),
        settings, paper_reference=R.is_r1_distill_1_5b(model, identity, name_or_path), rounds=bootstrap, seed=seed, baseline=base_report)
    R.write(report, Path(out))
    _print_table(report["rows"], report)
    typer.echo(f"\nreport: {Path(out).resolve()}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def gateway(ctx: typer.Context) -> None:
    """Serve a model: POST /generate and an OpenAI-compatible API (see `autothink gateway --help`).

    Example: autothink gateway --port 8000 [--api-key KEY]
    """
    from services.gateway.__main__ import main as gateway_main

    sys.exit(gateway_main(list(ctx.args)))


@app.command(
    "learner-probe",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def learner_probe(ctx: typer.Context) -> None:
    """Will an experiment fit? One real GRPO update on synthetic samples of given lengths; prints peak
    memory, tokens and time (see `autothink learner-probe --help`).

    Example: autothink learner-probe --model DIR --experiment paper --stage stage3 --lengths 30x256,2x8192
    Several ranks: torchrun --nproc_per_node N -m services.learner.probe ...
    """
    from services.learner.probe import main as probe_main

    sys.exit(probe_main(list(ctx.args)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
