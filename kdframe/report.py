"""Reports of sweeps, built from the sweep folder alone so that they can be rebuilt at any time.

For each variant, the report takes the row of the variant's report model (or each run's last stage)
from every seed's ``results.json`` and gives the number of seeds, the mean, the sample standard
deviation (n - 1) and the 95% confidence interval of the mean (:mod:`kdframe.stats`) of its
final-epoch and best-epoch test accuracy (the best epoch is chosen by the validation split when the
runs have one), its parameter count and the mean wall time per seed of the stages each run trained
itself. Pairs of variants (the sweep file's ``comparisons``; default: each variant against the first)
get the difference of their means with Welch's t-test and the paired test over common seeds. It
writes ``results.csv``, ``comparisons.csv``, ``results.md`` (the tables, a line on sharing and the
runs that are missing) and ``results.png`` (accuracy by variant with 95% CI error bars and every
seed as a dot). ``sweep.json`` supplies the
variants, seeds, report stage of each run and what was shared; without it the variants and seeds are
discovered from the ``<variant>/seed-<N>/`` folders and each finished run's last stage is reported.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdframe.errors import SweepError
from kdframe.results import RESULTS_FILE
from kdframe.stats import CONFIDENCE, Comparison, Summary, compare, format_p, summarize

SWEEP_FILE = "sweep.json"
SCHEDULE_FILE = "schedule.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
COMPARISONS_CSV = "comparisons.csv"
CSV_COLUMNS = [
    "variant",
    "model",
    "stage",
    "seeds",
    "seeds_expected",
    "final_acc_mean",
    "final_acc_std",
    "best_acc_mean",
    "best_acc_std",
    "final_acc_ci_low",
    "final_acc_ci_high",
    "best_acc_ci_low",
    "best_acc_ci_high",
    "selected_by",
    "params",
    "wall_time_s_mean",
    "macs",
    "size_mb",
    "latency_b1_ms_mean",
    "params_x",
    "speedup_x_mean",
    "missing_seeds",
    "collapsed_seeds",
]
COMPARISON_COLUMNS = [
    "variant",
    "baseline",
    "metric",
    "n_variant",
    "n_baseline",
    "difference",
    "ci_low",
    "ci_high",
    "welch_t",
    "welch_p",
    "paired_n",
    "paired_t",
    "paired_p",
]
NOTE = (
    "Accuracy: test accuracy (%) of each variant's report model, mean ± sample standard deviation "
    "(n - 1) over seeds [95% confidence interval of the mean, t distribution] (n/a with one seed); "
    "*final* is the last epoch of each run, *best* the test accuracy at its selected epoch, chosen by "
    "the validation split (*selected by* val) or, for runs without one, by the test split itself "
    "(*selected by* test, an optimistic figure). Time / seed: mean over seeds of the wall time of the stages each run trained itself "
    "(models reused from other runs are not counted). MACs, size and latency (median at batch 1, "
    "mean over seeds) are the compression report's; ×: how many times fewer parameters and how "
    "many times faster than the run's teacher (see docs/deployment.md)."
)
_SEED_FOLDER = re.compile(r"^seed-(\d+)$")


@dataclass
class VariantRow:
    """The numbers of one variant over its seeds."""

    variant: str
    model: str = ""
    stage: str = ""
    expected: int = 0
    seeds: list[int] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    selected_by: list[str] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)
    params: int | None = None
    macs: int | None = None
    size_mb: float | None = None
    params_x: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    speedups: list[float] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    collapsed: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @staticmethod
    def _mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    @staticmethod
    def _std(values: list[float]) -> float | None:
        return statistics.stdev(values) if len(values) >= 2 else None

    @property
    def final_mean(self) -> float | None:
        return self._mean(self.final)

    @property
    def final_std(self) -> float | None:
        return self._std(self.final)

    @property
    def best_mean(self) -> float | None:
        return self._mean(self.best)

    @property
    def best_std(self) -> float | None:
        return self._std(self.best)

    @property
    def final_summary(self) -> Summary:
        return summarize(self.final)

    @property
    def best_summary(self) -> Summary:
        return summarize(self.best)

    @property
    def selection(self) -> str:
        """The split that selected the best epochs: ``val``, ``test``, ``mixed`` or ``-``."""
        kinds = sorted(set(self.selected_by))
        return kinds[0] if len(kinds) == 1 else ("mixed" if kinds else "-")

    def by_seed(self, metric: str) -> dict[int, float]:
        """``{seed: accuracy}`` of ``final`` or ``best``."""
        return dict(zip(self.seeds, self.final if metric == "final" else self.best))

    @property
    def wall_time_mean(self) -> float | None:
        return self._mean(self.wall_times)

    @property
    def latency_mean(self) -> float | None:
        return self._mean(self.latencies_ms)

    @property
    def speedup_mean(self) -> float | None:
        return self._mean(self.speedups)

    def add_compression(self, figures: Any) -> None:
        """Take one seed's ``compression`` entry (ignored when absent or malformed)."""
        if not isinstance(figures, dict):
            return
        try:
            latency = float(figures["latency"]["median_ms"])
            macs, size = int(figures["macs"]), float(figures["size_mb"])
            versus = figures.get("vs_reference") or {}
            params_x, speedup = versus.get("params_x"), versus.get("speedup_x")
        except (KeyError, TypeError, ValueError):
            return
        self.latencies_ms.append(latency)
        if self.macs is None:
            self.macs, self.size_mb = macs, size
            self.params_x = float(params_x) if isinstance(params_x, (int, float)) else None
        if isinstance(speedup, (int, float)):
            self.speedups.append(float(speedup))


@dataclass
class SweepReport:
    """A sweep's report: one row per variant, the missing runs and what was shared."""

    folder: Path
    name: str
    description: str
    rows: list[VariantRow]
    missing: list[tuple[str, int, str]]
    sharing: list[str]
    has_plan: bool
    comparisons: list[tuple[Comparison, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Reading the folders
# ---------------------------------------------------------------------------------------------------


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file kdframe wrote, or a :class:`SweepError` naming it (``what``) and the reason."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SweepError(f"Cannot read {what} '{path}': {error}.") from None


def _discovered_runs(folder: Path) -> dict[str, list[int]]:
    """``{variant: [seeds]}`` from ``<variant>/seed-<N>/`` folders."""
    found: dict[str, list[int]] = {}
    try:
        children = sorted(child for child in folder.iterdir() if child.is_dir())
    except OSError:
        return found
    for child in children:
        try:
            seeds = sorted(int(match.group(1)) for sub in child.iterdir() if sub.is_dir() and (match := _SEED_FOLDER.match(sub.name)))
        except OSError:
            continue
        if seeds:
            found[child.name] = seeds
    return found


def is_sweep_folder(folder: Path) -> bool:
    """A folder with ``sweep.json``, or with ``<variant>/seed-<N>/`` run folders."""
    return folder.is_dir() and ((folder / SWEEP_FILE).is_file() or bool(_discovered_runs(folder)))


def is_run_folder(folder: Path) -> bool:
    """A folder written by ``kdframe run`` (``results.json`` or ``schedule.json``)."""
    return folder.is_dir() and ((folder / RESULTS_FILE).is_file() or (folder / SCHEDULE_FILE).is_file())


def _sharing_lines(runs: list[dict[str, Any]]) -> list[str]:
    groups: dict[tuple[str, str, str], list[str]] = {}
    for run in runs:
        for entry in run.get("reuses", []):
            key = (entry.get("from", "?"), entry.get("from_stage", entry.get("stage", "?")), entry.get("model", "?"))
            groups.setdefault(key, []).append(run.get("folder", f"{run.get('variant')}/seed-{run.get('seed')}"))
    lines = []
    for (source, stage, model), users in groups.items():
        model_text = f"`{model}`" if model == stage else f"`{model}` (stage `{stage}`)"
        lines.append(f"{model_text} trained once in {source}, reused by {', '.join(users)}")
    return lines


def collect(folder: str | Path) -> SweepReport:
    """Read a sweep folder's runs into a :class:`SweepReport` (nothing is written)."""
    folder = Path(folder)
    if not is_sweep_folder(folder):
        raise SweepError(_not_a_report_folder(folder))
    plan: dict[str, Any] | None = None
    if (folder / SWEEP_FILE).is_file():
        plan = read_json_file(folder / SWEEP_FILE, "sweep file")
        if not isinstance(plan, dict) or not isinstance(plan.get("variants"), dict) or not isinstance(plan.get("seeds"), list):
            raise SweepError(f"'{folder / SWEEP_FILE}' is not a sweep.json written by kdframe (no variants and seeds).")
        variants = list(plan["variants"])
        seeds_of = {variant: list(plan["seeds"]) for variant in variants}
        runs = {(run.get("variant"), run.get("seed")): run for run in plan.get("runs", []) if isinstance(run, dict)}
        name, description = str(plan.get("name", folder.name)), str(plan.get("description", ""))
    else:
        seeds_of = _discovered_runs(folder)
        variants = list(seeds_of)
        runs = {}
        name, description = folder.name, ""

    rows: list[VariantRow] = []
    missing: list[tuple[str, int, str]] = []
    for variant in variants:
        row = VariantRow(variant, expected=len(seeds_of[variant]))
        for seed in seeds_of[variant]:
            run = runs.get((variant, seed), {})
            stage = run.get("report_stage")
            why = _add_seed(row, folder / variant / f"seed-{seed}", seed, stage)
            if why:
                row.missing.append(seed)
                missing.append((variant, seed, why))
            if not row.stage and stage:
                row.stage, row.model = stage, run.get("report_model", stage)
        rows.append(row)
    sharing = _sharing_lines(list(runs.values())) if plan is not None else []
    pairs = plan.get("comparisons") if plan is not None else None
    report = SweepReport(folder, name, description, rows, missing, sharing, plan is not None)
    report.comparisons = comparisons(rows, pairs if isinstance(pairs, list) else None)
    return report


def comparison_pairs(variants: list[str], declared: list[Any] | None) -> list[tuple[str, str]]:
    """``(variant, baseline)`` pairs: the declared ones (``{"variant", "baseline"}`` objects) that
    name known variants, or by default each variant against the first."""
    if declared:
        pairs = []
        for entry in declared:
            if isinstance(entry, dict) and entry.get("variant") in variants and entry.get("baseline") in variants:
                pairs.append((str(entry["variant"]), str(entry["baseline"])))
        return pairs
    return [(variant, variants[0]) for variant in variants[1:]]


def comparisons(rows: list[VariantRow], declared: list[Any] | None = None) -> list[tuple[Comparison, str]]:
    """Each pair's :class:`~kdframe.stats.Comparison` and the metric compared: ``best`` (the test
    accuracy at the epoch the validation split selected) when every run of both variants had a
    validation split, else ``final`` (the last epoch's: the test split never selects it)."""
    by_name = {row.variant: row for row in rows}
    result = []
    for variant, baseline in comparison_pairs([row.variant for row in rows], declared):
        first, second = by_name[variant], by_name[baseline]
        metric = "best" if first.selection == "val" and second.selection == "val" else "final"
        result.append((compare(variant, first.by_seed(metric), baseline, second.by_seed(metric)), metric))
    return result


def _add_seed(row: VariantRow, run_folder: Path, seed: int, stage: str | None) -> str:
    """Add one seed's numbers to ``row``; return why it is missing, or an empty string."""
    path = run_folder / RESULTS_FILE
    if not run_folder.is_dir():
        return "not run"
    if not path.is_file():
        return "no results.json"
    try:
        results = json.loads(path.read_text())
        stages = results["stages"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return "unreadable results.json"
    if stage:
        matches = [item for item in stages if item.get("stage") == stage]
        if not matches:
            return f"stage '{stage}' not finished" if not results.get("finished") else f"no stage '{stage}'"
        chosen = matches[-1]
    else:
        if not results.get("finished") or not stages:
            return "run not finished"
        chosen = stages[-1]
    try:
        final, best = float(chosen["final_test_acc"]), float(chosen["best_test_acc"])
        wall = sum(float(item.get("wall_time_s", 0.0)) for item in stages)
    except (KeyError, TypeError, ValueError):
        return "unreadable results.json"
    row.seeds.append(seed)
    row.final.append(final)
    row.best.append(best)
    row.selected_by.append("val" if chosen.get("selected_by") == "val" else "test")
    row.wall_times.append(wall)
    if row.params is None and chosen.get("params") is not None:
        row.params = int(chosen["params"])
    row.add_compression(chosen.get("compression"))
    if chosen.get("collapsed"):
        row.collapsed.append(seed)
    if not row.stage:
        row.stage, row.model = str(chosen.get("stage", "")), str(chosen.get("model", ""))
    return ""


# ---------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f}M"
    if value >= 1_000:
        return f"{value / 1_000:.1f}k"
    return str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 600:
        return f"{value / 60:.1f} min"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}×"


def _acc(summary: Summary) -> str:
    if summary.mean is None:
        return "-"
    if summary.std is None or summary.ci_low is None or summary.ci_high is None:
        return f"{summary.mean:.2f} ± n/a"
    return f"{summary.mean:.2f} ± {summary.std:.2f} [{summary.ci_low:.2f}, {summary.ci_high:.2f}]"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def markdown_table(report: SweepReport) -> str:
    """The Markdown table: one row per variant."""
    lines = [
        "| variant | model | seeds | final acc % | best acc % | selected by | params | MACs | latency b1 | × fewer params | × faster | time / seed |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        seeds = str(row.n) if row.n == row.expected else f"{row.n}/{row.expected}"
        final = _acc(row.final_summary)
        if row.collapsed:
            plural = "s" if len(row.collapsed) > 1 else ""
            final += f" (collapsed: seed{plural} {', '.join(map(str, row.collapsed))})"
        lines.append(
            f"| {row.variant} | {row.model or '-'} | {seeds} | {final} | {_acc(row.best_summary)} | {row.selection} "
            f"| {_count(row.params)} | {_count(row.macs)} | {_ms(row.latency_mean)} | {_x(row.params_x)} "
            f"| {_x(row.speedup_mean)} | {_seconds(row.wall_time_mean)} |"
        )
    return "\n".join(lines)


def comparisons_table(report: SweepReport) -> str:
    """The Markdown table of the comparisons ("" when there are none)."""
    if not report.comparisons:
        return ""
    lines = [
        f"| variant | baseline | metric | Δ mean (points) | {CONFIDENCE:.0%} CI of Δ (Welch) | Welch p | paired seeds | paired p |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for comparison, metric in report.comparisons:
        interval = (
            "n/a" if comparison.ci_low is None or comparison.ci_high is None else f"[{comparison.ci_low:+.2f}, {comparison.ci_high:+.2f}]"
        )
        lines.append(
            f"| {comparison.variant} | {comparison.baseline} | {metric} | {_signed(comparison.difference)} | {interval} "
            f"| {format_p(comparison.welch_p)} | {comparison.paired_n} | {format_p(comparison.paired_p)} |"
        )
    return "\n".join(lines)


COMPARISONS_NOTE = (
    "Comparisons: Δ is the variant's mean minus the baseline's, in accuracy points, with the "
    "confidence interval and two-sided p-value of Welch's t-test (unequal variances; needs two seeds "
    "per variant) and the two-sided p-value of the paired t-test over the seeds both ran (scipy.stats). "
    "*metric*: *best* (test accuracy at the epoch the validation split selected) when every run of "
    "both variants had a validation split, else *final*. n/a: too few seeds, or no variance at all. "
    "With several comparisons, a p-value below 0.05 is weaker evidence than it looks."
)


def markdown(report: SweepReport) -> str:
    """``results.md``: title, table, what the columns mean, sharing and missing runs."""
    parts = [f"# Sweep `{report.name}`", ""]
    if report.description:
        parts += [report.description, ""]
    parts += [markdown_table(report), "", NOTE, ""]
    table = comparisons_table(report)
    if table:
        parts += [table, "", COMPARISONS_NOTE, ""]
    if not report.has_plan:
        parts.append("Sharing: unknown (no sweep.json in this folder).")
    elif report.sharing:
        parts.append("Sharing: " + "; ".join(report.sharing) + ".")
    else:
        parts.append("Sharing: none; every run trained all of its stages.")
    if report.missing:
        listing = ", ".join(f"{variant} seed {seed} ({why})" for variant, seed, why in report.missing)
        parts += ["", f"Missing: {listing}."]
    return "\n".join(parts) + "\n"


def _number(value: float | None, *, std: bool = False, n: int = 0) -> str:
    if value is None:
        return "n/a" if std and n == 1 else ""
    return f"{value:.4f}"


def csv_text(report: SweepReport) -> str:
    """``results.csv``: one line per variant (std is ``n/a`` with one seed)."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        final, best = row.final_summary, row.best_summary
        writer.writerow(
            [
                row.variant,
                row.model,
                row.stage,
                row.n,
                row.expected,
                _number(row.final_mean),
                _number(row.final_std, std=True, n=row.n),
                _number(row.best_mean),
                _number(row.best_std, std=True, n=row.n),
                _number(final.ci_low, std=True, n=row.n),
                _number(final.ci_high, std=True, n=row.n),
                _number(best.ci_low, std=True, n=row.n),
                _number(best.ci_high, std=True, n=row.n),
                row.selection,
                "" if row.params is None else row.params,
                _number(row.wall_time_mean),
                "" if row.macs is None else row.macs,
                _number(row.size_mb),
                _number(row.latency_mean),
                _number(row.params_x),
                _number(row.speedup_mean),
                " ".join(map(str, row.missing)),
                " ".join(map(str, row.collapsed)),
            ]
        )
    return stream.getvalue()


def comparisons_csv_text(report: SweepReport) -> str:
    """``comparisons.csv``: one line per comparison (empty values where a test cannot be computed)."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COMPARISON_COLUMNS)

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.6g}"

    for comparison, metric in report.comparisons:
        writer.writerow(
            [
                comparison.variant,
                comparison.baseline,
                metric,
                comparison.n_variant,
                comparison.n_baseline,
                number(comparison.difference),
                number(comparison.ci_low),
                number(comparison.ci_high),
                number(comparison.welch_t),
                number(comparison.welch_p),
                comparison.paired_n,
                number(comparison.paired_t),
                number(comparison.paired_p),
            ]
        )
    return stream.getvalue()


def write_png(report: SweepReport, path: Path) -> None:
    """Write :func:`sweep_figure` as a PNG."""
    sweep_figure(report).savefig(path, format="png")


def sweep_figure(report: SweepReport) -> Any:
    """Accuracy by variant: final and best side by side (one bar when they are the same in every
    run), from 0 %, with 95% CI error bars, each seed as a dot and the mean written on the bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [row for row in report.rows if row.n > 0]
    pairs = [(comparison, metric) for comparison, metric in report.comparisons if comparison.difference is not None]
    width_in = max(4.0, 1.3 * len(rows) + 2.0)
    figure = Figure(figsize=(width_in + (max(3.5, 0.9 * len(pairs) + 1.5) if pairs else 0.0), 4.0), dpi=120)
    FigureCanvasAgg(figure)
    if pairs:
        axes, differences = figure.subplots(1, 2, width_ratios=[width_in, max(3.5, 0.9 * len(pairs) + 1.5)])
        _draw_differences(differences, pairs)
    else:
        axes = figure.add_subplot()
    same = all(row.final == row.best for row in rows)
    series = [("final = best epoch" if same else "final epoch", "#4C72B0", lambda r: r.final, lambda r: r.final_summary)]
    if not same:
        series.append(("best (selected) epoch", "#DD8452", lambda r: r.best, lambda r: r.best_summary))
    width = 0.6 if same else 0.38
    for position, (label, color, values_of, summary_of) in enumerate(series):
        offset = 0.0 if same else (position - 0.5) * width
        xs = [index + offset for index in range(len(rows))]
        summaries = [summary_of(row) for row in rows]
        means = [summary.mean for summary in summaries]
        errors = [0.0 if summary.ci_high is None or summary.mean is None else summary.ci_high - summary.mean for summary in summaries]
        axes.bar(xs, means, width, yerr=errors, capsize=4, label=label, color=color, alpha=0.85)
        for x, row, mean in zip(xs, rows, means):
            axes.scatter([x] * len(values_of(row)), values_of(row), s=10, color="black", zorder=3)
            if mean is not None:
                axes.text(x, mean / 2, f"{mean:.2f}", ha="center", va="center", fontsize=7, color="white", rotation=90)
    axes.set_xticks(range(len(rows)), [row.variant for row in rows])
    axes.set_ylabel("test accuracy %")
    models = sorted({row.model for row in rows if row.model})
    axes.set_title(f"{report.name}: {', '.join(models) or 'report model'} (mean, 95% CI, seeds)", fontsize=10)
    axes.set_ylim(0.0, 100.0)
    if not rows:
        axes.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=axes.transAxes)
    if rows:
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def _draw_differences(axes: Any, pairs: list[tuple[Comparison, str]]) -> None:
    """Each comparison's difference of means with its 95% CI (Welch), around a line at 0."""
    for index, (comparison, metric) in enumerate(pairs):
        low = comparison.ci_low if comparison.ci_low is not None else comparison.difference
        high = comparison.ci_high if comparison.ci_high is not None else comparison.difference
        significant = comparison.welch_p is not None and comparison.welch_p < 0.05
        color = "#C44E52" if significant else "#4C72B0"
        axes.errorbar([index], [comparison.difference], yerr=[[comparison.difference - low], [high - comparison.difference]],
                      fmt="o", color=color, capsize=4)
        axes.text(index, high, f" p={format_p(comparison.welch_p)}", ha="center", va="bottom", fontsize=7)
    axes.axhline(0.0, color="black", linewidth=0.8)
    labels = [f"{comparison.variant}\n- {comparison.baseline}" for comparison, _ in pairs]
    axes.set_xticks(range(len(pairs)), labels, fontsize=7)
    axes.set_xlim(-0.6, len(pairs) - 0.4)
    axes.set_ylabel(f"Δ {pairs[0][1] if len({metric for _, metric in pairs}) == 1 else ''} accuracy (points)")
    axes.set_title("differences, 95% CI (Welch; red: p < 0.05)", fontsize=9)
    axes.grid(axis="y", alpha=0.3)


def write_report(folder: str | Path) -> SweepReport:
    """Rebuild ``results.csv``, ``results.md`` and ``results.png`` of a sweep folder."""
    report = collect(folder)
    try:
        (report.folder / RESULTS_CSV).write_text(csv_text(report))
        (report.folder / COMPARISONS_CSV).write_text(comparisons_csv_text(report))
        (report.folder / RESULTS_MD).write_text(markdown(report))
        write_png(report, report.folder / RESULTS_PNG)
    except OSError as error:
        raise SweepError(f"Cannot write the report into '{report.folder}': {error.strerror or error}.") from None
    return report


def _not_a_report_folder(folder: Path) -> str:
    return (
        f"'{folder}' is neither a sweep folder (it has no {SWEEP_FILE} and no <variant>/seed-<N>/ run "
        f"folders) nor a run folder (no {RESULTS_FILE}). Point 'kdframe report' at a folder that "
        "'kdframe sweep' or 'kdframe run' wrote."
    )


def report_text(folder: str | Path, plot: str | Path | None = None) -> str:
    """What ``kdframe report DIR`` prints: a sweep's rebuilt report, or a run's tables (and its
    curves drawn into ``plot``, default ``DIR/curves.png``; see :mod:`kdframe.run_report`)."""
    folder = Path(folder)
    if not folder.exists():
        raise SweepError(f"'{folder}' does not exist. Give the folder that 'kdframe sweep' or 'kdframe run' wrote.")
    if not folder.is_dir():
        raise SweepError(f"'{folder}' is a file, not a folder. {_not_a_report_folder(folder)}")
    if (folder / SWEEP_FILE).is_file() or (not is_run_folder(folder) and is_sweep_folder(folder)):
        if plot is not None:
            raise SweepError(f"--plot is for run folders; the report of the sweep in '{folder}' draws {RESULTS_PNG} there.")
        report = write_report(folder)
        written = ", ".join(str(folder / name) for name in (RESULTS_MD, RESULTS_CSV, COMPARISONS_CSV, RESULTS_PNG))
        return f"{markdown(report)}\nWritten: {written}"
    if is_run_folder(folder):
        from kdframe.run_report import run_text

        return run_text(folder, plot)
    raise SweepError(_not_a_report_folder(folder))


__all__ = [
    "SweepReport",
    "VariantRow",
    "collect",
    "comparisons",
    "comparisons_csv_text",
    "comparisons_table",
    "csv_text",
    "markdown",
    "markdown_table",
    "sweep_figure",
    "report_text",
    "write_report",
]
