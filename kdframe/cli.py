"""The ``kdframe`` command line: run, validate, plugins, schema, sweep, report.

Errors caused by input (a bad schedule, missing data, an unknown component...) print one clear
paragraph and exit with status 2; ``--debug`` adds the traceback. Any other exception is a bug: it
exits with status 1 and asks for a report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kdframe import __version__
from kdframe.errors import KdframeError, SweepError, TuneError, printable
from kdframe.registry import KINDS, PLURALS

EXIT_INPUT_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
kdframe: knowledge distillation for PyTorch. An experiment is a JSON schedule (data, models,
training, distillation losses, curriculum); losses, models, curricula, datasets, loggers, optimizers,
LR schedules and exporters are plugins found through the 'kdframe' entry-point group.

Start with:  kdframe run examples/quickstart.json
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdframe", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"kdframe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    set_help = (
        "override a schedule value before validation, e.g. --set training.epochs=2 or "
        "--set distill.losses.1.params.temperature=8 (VALUE is JSON; bare words are strings); repeatable"
    )
    run = commands.add_parser(
        "run",
        help="validate a schedule in full, then train every stage",
        description="Validate SCHEDULE (structure, every component's params, the curriculum's stages, "
        "data, models, checkpoints and layers), then train stage by stage. The run folder gets the "
        "resolved schedule.json, stages/NN-<name>/student.pt, tensorboard/ logs and results.json; the "
        "results table is printed at the end.",
    )
    run.add_argument("schedule", metavar="SCHEDULE.json", help="the schedule file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    run.add_argument("--out", metavar="DIR", help="run folder (default: runs/<name>-<timestamp>); must not hold an earlier run")
    run.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines; only the final table")

    resume = commands.add_parser(
        "resume",
        help="continue an interrupted run from its last completed epoch",
        description="Continue the run in RUN_DIR after a crash, a kill, Ctrl-C or a full disk. Stages "
        "that finished are restored from their folders, not re-run; the unfinished stage continues from "
        "the full-state checkpoint (state.pt) of its last completed epoch, so at most one epoch is "
        "repeated. The run continues with the schedule it started with (RUN_DIR/schedule.json); "
        "--schedule or --set that change it are refused with the list of changes unless --force.",
    )
    resume.add_argument("folder", metavar="RUN_DIR", help="the run folder ('Run folder:' of kdframe run)")
    resume.add_argument("--schedule", metavar="SCHEDULE.json", help="continue with this schedule instead of RUN_DIR/schedule.json")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    resume.add_argument("--force", action="store_true", help="accept a schedule that differs from the one the run started with")
    resume.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines; only the final table")

    validate = commands.add_parser(
        "validate",
        help="check a schedule (or a sweep or tune file) without training",
        description="Check a schedule as 'kdframe run' would (structure, component params, stage plan, "
        "data, models, checkpoints, layers, and one dry training step of every stage on two samples), "
        "print the stages it would run, and train nothing. Given a sweep file, check every (variant, "
        "seed) run as 'kdframe sweep' would and print the plan; given a tune file, check the schedule "
        "at both corners of the search space as 'kdframe tune' would. Nothing is created.",
    )
    validate.add_argument("schedule", metavar="SCHEDULE.json", help="the schedule, sweep or tune file")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    validate.add_argument("--print", dest="print_resolved", action="store_true", help="print the resolved schedule (all defaults filled in)")

    plugins = commands.add_parser(
        "plugins",
        help="list installed components (losses, models, curricula, datasets, loggers, optimizers, LR schedules, exporters)",
        description="List every registered component with its kind, family, summary and the plugin "
        "and distribution that provide it.",
    )
    plugins.add_argument("pattern", nargs="?", default="*", help="wildcard filter on names, e.g. 'rkd*'")
    plugins.add_argument("--kind", choices=list(KINDS), help="only this kind")
    plugins.add_argument("--params", action="store_true", help="also list each component's params (type, default, description)")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    sweep = commands.add_parser(
        "sweep",
        help="run a base schedule's variants over several seeds and report mean ± std",
        description="Run an experiment sweep: SWEEP.json names a base schedule, a list of seeds and named "
        "variants (overrides merged into the base). Every (variant, seed) schedule is validated in full "
        "before anything trains. A model that several runs would train identically (same architecture, "
        "teachers, losses, training settings, data and seed) is trained once and reused. Runs go "
        "seed-major into <out>/<variant>/seed-<seed>/; sweep.json records what was shared, and "
        "results.csv, comparisons.csv, results.md and results.png hold the report (mean, std, 95%% CI, "
        "Welch's and paired t-tests), whose tables are printed at the end. With --jobs N, N worker "
        "processes run independent runs in parallel (a shared model is trained once, before the runs "
        "that reuse it; the results are the same as with --jobs 1). --join DIR resumes a sweep that "
        "stopped, or adds workers to one that is running, on this machine or on another that mounts "
        "DIR at the same path. See docs/experiments.md.",
    )
    sweep.add_argument("sweep", metavar="SWEEP.json", nargs="?", help="the sweep file (not with --join)")
    sweep.add_argument("--join", metavar="DIR", help="work on the sweep in DIR: resume it, or help the workers already on it")
    sweep.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes on this machine (default 1: every run in this process)")
    sweep.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="PyTorch threads of every run (default: PyTorch's own, divided by N; with --join, the "
        "sweep's). Runs are bit-identical for the same T, whatever N",
    )
    sweep.add_argument("--retry-failed", action="store_true", help="with --join: run again the runs that failed")
    sweep.add_argument(
        "--plan-only",
        action="store_true",
        help="validate and plan the sweep into its folder, run nothing: then start workers with --join DIR (several machines)",
    )
    sweep.add_argument("--out", metavar="DIR", help="sweep folder (default: runs/<sweep name>-<timestamp>); must not hold files")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines; only the plan, one line per run and the final table")
    sweep.add_argument("--seeds", metavar="LIST", help="comma-separated seeds that replace the sweep file's, e.g. --seeds 0,1")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change every run's schedule, after its variant's overrides (so it wins), e.g. --set "
        "training.epochs=1 --set data.train_samples=2000 for a quick try; repeatable. Not seed "
        "(use --seeds), name or plugins. To only check a sweep file, use 'kdframe validate SWEEP.json'",
    )

    tune = commands.add_parser(
        "tune",
        help="search a schedule's hyper-parameters with Optuna; the objective is a validation metric",
        description="Hyper-parameter search: TUNE.json names a base schedule, a search space (ranges "
        "or choices for dotted schedule keys, as with --set), the objective (best_val_acc or "
        "final_val_acc of a stage: the validation split, never the test split), the number of trials, "
        "Optuna's sampler (tpe, random, grid; seeded) and pruner (fed the validation accuracy after "
        "every epoch). Every trial is a run in <out>/trials/trial-NNNN/. The study is stored in the "
        "folder (study.journal), so --join DIR resumes a study that stopped (a killed trial continues "
        "from its last epoch) or adds a worker, on this machine or another that mounts DIR at the same "
        "path. The report: trials.csv, results.md, tune.png and best_schedule.json (kdframe run "
        "accepts it). See docs/tuning.md.",
    )
    tune.add_argument("tune", metavar="TUNE.json", nargs="?", help="the tune file (not with --join)")
    tune.add_argument("--join", metavar="DIR", help="work on the study in DIR: resume it, or help the workers already on it")
    tune.add_argument("--trials", type=int, metavar="N", help="trials in the study, replacing the tune file's")
    tune.add_argument("--plan-only", action="store_true", help="validate and create the study folder, run no trial; then start workers with --join DIR")
    tune.add_argument("--out", metavar="DIR", help="tune folder (default: runs/<name>-<timestamp>); must not hold files")
    tune.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines; one line per trial and the final table")

    report = commands.add_parser(
        "report",
        help="rebuild a sweep's report, show a run's tables and training curves, or compare runs",
        description="DIR is a sweep folder (written by 'kdframe sweep'): rebuild results.csv, results.md "
        "and results.png from its run folders and print the Markdown table, listing the runs that are "
        "missing. Or DIR is a run folder (written by 'kdframe run'): print its stage table, its compression "
        "report (each model's size and speed against the teacher) and what 'kdframe export' wrote, and draw "
        "its stages' accuracy and training loss by epoch into DIR/curves.png (or --plot FILE). Several run "
        "folders are compared by their final students: one table row per run, and their curves together "
        "in --plot FILE. A tune folder: rebuild the study's report. See docs/experiments.md.",
    )
    report.add_argument("folder", metavar="DIR", nargs="+", help="a sweep, tune or run folder, or several run folders to compare")
    report.add_argument("--plot", metavar="FILE.png", help="where to draw the curves (one run: default DIR/curves.png; several runs: only with --plot)")

    export = commands.add_parser(
        "export",
        help="export a trained model (ONNX, pt2, TorchScript; int8) and verify it in its runtime",
        description="Rebuild a stage's trained model from RUN_DIR (default: the last stage that saved a "
        "model, the run's final student), export it with a dynamic batch size, load the artefact in its "
        "own runtime (ONNX Runtime, torch.export.load, torch.jit.load), run it on the run's test split and "
        "report its size, latency, accuracy and largest logit difference against eager PyTorch. --int8 "
        "also writes a statically quantized model calibrated on training images. Files go to "
        "RUN_DIR/exports/ (or --out) with a report <stage>.<format>.json; if the export or its check "
        "fails, nothing is written. See docs/deployment.md.",
    )
    export.add_argument("folder", metavar="RUN_DIR", help="the run folder ('Run folder:' of kdframe run)")
    export.add_argument("--stage", metavar="NAME", help="the stage whose model to export (default: the run's final student)")
    export.add_argument("--format", default="onnx", metavar="FORMAT", help="a registered exporter: onnx (default), pt2, torchscript, or one a plugin adds ('kdframe plugins --kind exporter')")
    export.add_argument("--best", action="store_true", help="export the weights of the stage's best epoch (best.pt, chosen by the validation split when there is one) instead of its last (student.pt); files are named <stage>-best.*")
    export.add_argument("--int8", action="store_true", help="also write and verify a post-training int8 model (formats that offer it: onnx)")
    export.add_argument("--calibration-samples", type=int, default=256, metavar="N", help="training images that calibrate --int8 (default 256)")
    export.add_argument("--test-samples", type=int, metavar="N", help="verify on the first N test images only (default: the whole test split)")
    export.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE", help="an exporter param, e.g. --param opset=17 (see 'kdframe plugins --kind exporter --params'); repeatable")
    export.add_argument("--out", metavar="DIR", help="write the files here instead of RUN_DIR/exports")

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of a schedule",
        description="Print the JSON Schema of a schedule, with the params of every installed component; "
        "point an editor at it (\"$schema\" in a schedule) for completion and checking.",
    )
    schema.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    schema.add_argument(
        "--first-party",
        action="store_true",
        help="only kdframe's own components, not those of other installed plugins (how "
        "docs/schedule.schema.json is generated)",
    )
    return parser


def _train_and_report(train: Callable[[], tuple[Path, list[Any]]]) -> int:
    """Run ``train`` (a run or a resumed run), then print its results table and folder."""
    from kdframe import distributed
    from kdframe.results import format_compression, format_table

    try:
        folder, results = train()
        main = distributed.is_main()
    finally:
        distributed.shutdown()
    if not main:  # under torchrun, rank 0 alone prints
        return 0
    print()
    rows = [result.to_dict() for result in results]
    print(format_table(rows))
    compression = format_compression(rows)
    if compression:
        print("\n" + compression)
    print(f"\nRun folder: {folder}")
    if (folder / "tensorboard").is_dir():  # only when the schedule lists the tensorboard logger
        print(f"TensorBoard: tensorboard --logdir {folder / 'tensorboard'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from kdframe.runner import run_schedule

    return _train_and_report(
        lambda: run_schedule(args.schedule, overrides=args.overrides, out=args.out, quiet=args.quiet)
    )


def _cmd_resume(args: argparse.Namespace) -> int:
    from kdframe.runner import resume_run

    return _train_and_report(
        lambda: resume_run(
            args.folder, schedule_path=args.schedule, overrides=args.overrides, force=args.force, quiet=args.quiet
        )
    )


def _file_kind(path: str) -> str | None:
    """``sweep`` or ``tune`` for a sweep or tune file (told apart by their required keys), else ``None``."""
    from kdframe.schedule import load_json

    try:
        data = load_json(path)
    except KdframeError:
        return None  # the schedule loader gives the error
    if "base" in data and "variants" in data:
        return "sweep"
    if "base" in data and "space" in data:
        return "tune"
    return None


def _validate_other(args: argparse.Namespace, kind: str) -> int:
    """``kdframe validate`` of a sweep file (every run's schedule, and the plan) or a tune file."""
    if args.print_resolved or (args.overrides and kind != "sweep"):
        flags = "--print" if args.print_resolved else "--set"
        raise KdframeError(
            f"'{args.schedule}' is a {kind} file: {flags} applies to schedules"
            + (" (and --set to sweep files)." if flags == "--print" else " and sweep files only.")
        )
    if kind == "sweep":
        from kdframe.sweep import describe_plan, load_sweep

        plan = load_sweep(args.schedule, overrides=args.overrides, log=print)
        print(f"Sweep file '{args.schedule}' is valid; nothing was created or trained.")
        for line in describe_plan(plan):
            print(line)
        return 0
    from kdframe.tune import corner_values, load_tune, validate_tune

    config, base = load_tune(args.schedule)
    validate_tune(config, base, f"Tune file '{args.schedule}'")
    print(f"Tune file '{args.schedule}' is valid (the schedule at both corners of the space); nothing was created or trained.")
    print(f"  {config.trials} trial(s) over {', '.join(config.space)}; objective {config.objective.metric} of "
          f"{config.objective.stage or 'the last stage'}; corners checked: {len(corner_values(config))}.")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from kdframe.runner import load_schedule, model_label, prepare
    from kdframe.stage_kinds import EVALUATE, PRETRAIN
    from kdframe.value_schedule import describe_value

    kind = _file_kind(args.schedule)
    if kind is not None:
        return _validate_other(args, kind)
    schedule, plugins, resolved_schedule = load_schedule(args.schedule, args.overrides)
    experiment = prepare(schedule, plugins, resolved_schedule)
    if args.print_resolved:
        print(json.dumps(resolved_schedule, indent=2))
        return 0
    print(f"Schedule '{args.schedule}' is valid: {len(experiment.setups)} stage(s).")
    for setup in experiment.setups:
        info = setup.info
        teachers = ", ".join(info.teachers) if info.teachers else "labels only"
        if setup.kind == PRETRAIN:
            terms = " + ".join(f"{w.name} (pre-training phase)" for w in setup.terms)
        elif setup.kind == EVALUATE:
            terms = "evaluated only, trains nothing"
        else:
            terms = " + ".join(f"{describe_value(w.weight)}*{w.name}" for w in setup.terms)
        extras = []
        if setup.init_from is not None:
            extras.append(f"starts from {setup.init_from}")
        if setup.teacher_policy is not None:
            extras.append(f"teacher policy {json.dumps(setup.teacher_policy.describe(), sort_keys=True, default=str)}")
        if setup.snapshots:
            extras.append(f"keeps snapshots after epochs {', '.join(map(str, setup.snapshots))}")
        more = f" ({'; '.join(extras)})" if extras else ""
        epochs = f"{info.epochs} epoch" + ("" if info.epochs == 1 else "s")
        arch = info.arch
        if info.student in schedule.models:
            config = schedule.models[info.student]
            arch = model_label(plugins.registry, config.arch, config.params) or arch
        print(f"  {info.index + 1}. {info.name} ({arch}), {epochs}, from {teachers}{more}: {terms}")
    for key, report in experiment.weights.items():
        print(report.summary(f"models.{key}"))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from kdframe.plugins import create_plugins

    plugins = create_plugins()
    components = list(plugins.registry.iter(args.kind, args.pattern))
    if args.json:
        rows = []
        for component in components:
            row = {
                "kind": component.kind,
                "name": component.name,
                "family": component.spec.family,
                "summary": component.spec.summary,
                "plugin": component.provider.plugin,
                "distribution": component.provider.distribution,
                "version": component.provider.version,
                "module": component.provider.module,
            }
            if args.params:
                row["params"] = component.spec.params.model_json_schema()
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return 0
    if not components:
        print("No component matches.")
        return 0
    current_kind = None
    for component in components:
        if component.kind != current_kind:
            current_kind = component.kind
            print(f"\n{PLURALS[current_kind]}:")
        family = f"[{component.spec.family}] " if component.spec.family else ""
        provider = component.provider
        source = f"{provider.distribution} {provider.version}".strip() or provider.module
        print(f"  {component.name:<16} {family}{component.spec.summary}  ({source}: {provider.plugin})")
        if args.params:
            for field_name, info in component.spec.params.model_fields.items():
                default = "required" if info.is_required() else f"default {json.dumps(info.get_default(call_default_factory=True), default=str)}"
                annotation = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
                print(f"      {field_name}: {annotation}, {default}. {info.description or ''}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from kdframe.folders import write_text_atomic
    from kdframe.json_schema import first_party_registry, schedule_schema
    from kdframe.plugins import create_plugins

    output = Path(args.output) if args.output else None
    if output is not None:
        if output.is_dir():
            raise KdframeError(
                f"schema --output '{output}' is a folder; give the path of a file to write, e.g. "
                f"--output {output / 'schedule.schema.json'}."
            )
        if not output.parent.is_dir():
            raise KdframeError(
                f"schema --output '{output}': the folder '{output.parent}' does not exist. Create it "
                "first, or write the file somewhere else."
            )
    registry = first_party_registry() if args.first_party else create_plugins().registry
    text = json.dumps(schedule_schema(registry), indent=2) + "\n"
    if output is not None:
        write_text_atomic(output, text)  # a StorageError (full disk, permissions) names the file
    else:
        sys.stdout.write(text)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from kdframe.report import COMPARISONS_CSV, RESULTS_CSV, RESULTS_MD, RESULTS_PNG, markdown
    from kdframe.sweep import join_sweep, parse_seeds, run_sweep

    from kdframe import distributed

    if distributed.launched():
        raise KdframeError(
            "kdframe sweep does not run under torchrun (WORLD_SIZE > 1): its runs would all write the "
            "same sweep folder. Run it as one process, or run each variant with torchrun ... -m kdframe run."
        )
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise SweepError(f"{flag} must be at least 1 (got {value}).")
    if (args.sweep is None) == (args.join is None):
        raise SweepError(
            "Give either a sweep file (kdframe sweep SWEEP.json) to start a sweep, or --join DIR to "
            "work on the sweep in DIR, not both and not neither."
        )
    if args.join is not None:
        if args.out is not None or args.seeds is not None or args.overrides:
            raise SweepError("--out, --seeds and --set belong to a new sweep; --join continues the sweep in DIR as it was planned.")
        if args.plan_only:
            raise SweepError("--plan-only goes with a sweep file: the sweep in DIR is planned already.")
        folder, report = join_sweep(args.join, jobs=args.jobs, threads=args.threads, quiet=args.quiet, retry_failed=args.retry_failed)
    else:
        if args.retry_failed:
            raise SweepError("--retry-failed goes with --join DIR (a new sweep has no failed runs).")
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        folder, planned = run_sweep(
            args.sweep,
            out=args.out,
            quiet=args.quiet,
            seeds=seeds,
            overrides=args.overrides,
            jobs=args.jobs,
            threads=args.threads,
            plan_only=args.plan_only,
        )
        if planned is None:
            print(f"Planned; nothing ran. Start workers on each machine with: kdframe sweep --join {folder} [--jobs N]")
            return 0
        report = planned
    print()
    print(markdown(report))
    print(f"Sweep folder: {folder}")
    print(f"Report: {', '.join(str(folder / name) for name in (RESULTS_MD, RESULTS_CSV, COMPARISONS_CSV, RESULTS_PNG))}")
    print(f"TensorBoard: tensorboard --logdir {folder}")
    return 0


def _exporter_params(pairs: list[str]) -> dict[str, Any]:
    """``--param KEY=VALUE`` pairs as a dict; a VALUE that is JSON (a number, true, a list) is parsed."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise KdframeError(f"--param '{pair}' is not KEY=VALUE. Write e.g. --param opset=17.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def _cmd_export(args: argparse.Namespace) -> int:
    from kdframe.export import export_stage, format_export

    for option, value in (("--calibration-samples", args.calibration_samples), ("--test-samples", args.test_samples)):
        if value is not None and value < 1:
            raise KdframeError(f"{option} must be a positive number of images, not {value}.")
    report, target = export_stage(
        args.folder,
        stage=args.stage,
        format=args.format,
        params=_exporter_params(args.params),
        int8=args.int8,
        calibration_samples=args.calibration_samples,
        test_samples=args.test_samples,
        out=args.out,
        best=args.best,
    )
    base = f"{report.stage}-best" if args.best else report.stage
    print(printable(format_export(report), keep_newlines=True))
    print(f"\nWritten to {target}: {', '.join(artefact.file for artefact in report.artefacts)}, {base}.{report.format}.json")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from kdframe.tune import BEST_SCHEDULE, RESULTS_MD, TRIALS_CSV, TUNE_PNG, join_tune, start_tune, write_report

    if args.trials is not None and args.trials < 1:
        raise TuneError(f"--trials must be at least 1 (got {args.trials}).")
    if (args.tune is None) == (args.join is None):
        raise TuneError(
            "Give either a tune file (kdframe tune TUNE.json) to start a study, or --join DIR to work on "
            "the study in DIR, not both and not neither."
        )
    if args.join is not None:
        if args.out is not None or args.trials is not None or args.plan_only:
            raise TuneError("--out, --trials and --plan-only belong to a new study; --join continues the study in DIR as it was created.")
        folder = Path(args.join)
        join_tune(folder, quiet=args.quiet)
    else:
        folder = start_tune(args.tune, out=args.out, trials=args.trials, quiet=args.quiet, plan_only=args.plan_only)
        if args.plan_only:
            return 0
    print()
    print(printable(write_report(folder), keep_newlines=True))
    print(f"Tune folder: {folder}")
    print(f"Report: {', '.join(str(folder / name) for name in (RESULTS_MD, TRIALS_CSV, TUNE_PNG, BEST_SCHEDULE))}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from kdframe.report import SWEEP_FILE, is_run_folder, report_text
    from kdframe.tune import TUNE_FILE, write_report

    if len(args.folder) > 1:
        from kdframe.run_report import compare_text

        for folder in map(Path, args.folder):
            if (folder / TUNE_FILE).is_file() or (folder / SWEEP_FILE).is_file() or not is_run_folder(folder):
                raise SweepError(
                    f"'{folder}' is not a run folder: several folders are compared only when each is a run "
                    "folder that 'kdframe run' wrote. Report a sweep or a tune folder on its own ('kdframe "
                    "report DIR'); its report compares its runs."
                )
        print(printable(compare_text(args.folder, args.plot), keep_newlines=True))
        return 0
    (folder,) = args.folder
    if (Path(folder) / TUNE_FILE).is_file():
        if args.plot is not None:
            raise SweepError("--plot is for run folders; a tune folder's report draws tune.png itself.")
        print(printable(write_report(folder), keep_newlines=True))
        return 0
    print(printable(report_text(folder, args.plot), keep_newlines=True))  # names read from files
    return 0


def _safe(message: str) -> str:
    """A message as one paragraph (no blank lines, whatever names the input held) with every
    non-printable character escaped, so that names quoted from a schedule or a file cannot send
    escape sequences or right-to-left overrides to the terminal."""
    lines = [printable(line) for line in message.split("\n") if line.strip()]
    return "\n".join(lines)


COMMANDS = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "validate": _cmd_validate,
    "plugins": _cmd_plugins,
    "schema": _cmd_schema,
    "sweep": _cmd_sweep,
    "tune": _cmd_tune,
    "report": _cmd_report,
    "export": _cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdframe`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT_ERROR
    if not args.debug:
        warnings.formatwarning = lambda message, category, *rest: f"warning: {_safe(str(message))}\n"  # type: ignore[assignment]
    try:
        return COMMANDS[args.command](args)
    except KdframeError as error:
        if args.debug:
            traceback.print_exc()
        print("error: " + _safe(str(error)), file=sys.stderr)
        return getattr(error, "exit_code", EXIT_INPUT_ERROR)
    except BrokenPipeError:  # output piped into a command that stopped reading (e.g. head)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_BUG
    except KeyboardInterrupt:
        print("\ninterrupted; finished stages and results.json are kept in the run folder.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug: say so, briefly, unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(
                f"error: kdframe failed unexpectedly: {type(error).__name__}: {_safe(str(error))}. This is a bug; "
                "rerun with --debug for the traceback and report it.",
                file=sys.stderr,
            )
        return EXIT_BUG
