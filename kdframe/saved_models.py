"""A trained model read back from its run folder, in one call: :func:`load_stage_model`.

A run folder holds what is needed to rebuild any stage's model: ``schedule.json`` (the resolved
schedule: the model's architecture and params, the data), ``results.json`` (the stages and their
``student.pt``) and the checkpoints. Everything is read as hostile input: the schedule is validated
like any schedule, checkpoints are loaded with ``weights_only=True`` and their checksums verified,
and a missing or damaged file is a one-paragraph error that names it. Nothing in the folder is
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdframe import checkpoints
from kdframe.data import AnyDataset, InMemoryDataset
from kdframe.errors import RunFolderError, suggest
from kdframe.plugins import Plugins
from kdframe.results import RESULTS_FILE, final_student_index
from kdframe.runner import SCHEDULE_FILE, build_model, load_data, load_schedule, read_results
from kdframe.schedule import Schedule


@dataclass
class SavedModel:
    """A stage's trained model, rebuilt from a run folder.

    Attributes:
        folder: The run folder.
        stage: The stage's name.
        key: The model's key in the schedule's ``models``.
        arch: Its architecture.
        model: The model with the stage's weights (after its last epoch, or after its best with
            ``best=True``), in eval mode, on the CPU.
        data: The run's dataset (the same train/test subsets as the run).
        schedule: The run's resolved schedule.
        plugins: The plugin manager the schedule was read with.
        row: The stage's row of ``results.json``.
        checkpoint: The file the weights were read from.
    """

    folder: Path
    stage: str
    key: str
    arch: str
    model: nn.Module
    data: AnyDataset
    schedule: Schedule
    plugins: Plugins
    row: dict[str, Any]
    checkpoint: Path


def _not_a_run(folder: Path, what: str) -> RunFolderError:
    return RunFolderError(
        f"'{folder}' {what}. Give the folder that 'kdframe run' wrote (printed as 'Run folder:' at "
        "the end of the run), e.g. runs/quickstart-<timestamp>."
    )


def finished_stages(folder: str | Path) -> list[dict[str, Any]]:
    """The stage rows of a run folder's ``results.json``; a missing folder, a folder that is not a
    run's, or a damaged results file is a :class:`~kdframe.errors.RunFolderError`."""
    folder = Path(folder)
    if not folder.exists():
        raise _not_a_run(folder, "does not exist")
    if not folder.is_dir():
        raise _not_a_run(folder, "is a file, not a folder")
    if not (folder / SCHEDULE_FILE).is_file():
        raise _not_a_run(folder, f"is not a run folder (it has no {SCHEDULE_FILE})")
    if not (folder / RESULTS_FILE).is_file():
        raise RunFolderError(f"Run folder '{folder}' has no {RESULTS_FILE} yet: no stage has finished. Wait for its first stage, or resume it.")
    stages = read_results(folder).get("stages", [])
    rows = [row for row in stages if isinstance(row, dict) and isinstance(row.get("stage"), str)]
    if len(rows) != len(stages):
        raise RunFolderError(f"'{folder / RESULTS_FILE}' has a damaged stage row. Restore the file from a copy, or resume the run to write it again.")
    return rows


def pick_stage(folder: Path, rows: list[dict[str, Any]], stage: str | None) -> dict[str, Any]:
    """The row of the named stage, or of the last stage that saved a model (the run's final student)."""
    with_weights = [row for row in rows if row.get("checkpoint")]
    if stage is None:
        final = final_student_index([row.get("checkpoint") or "" for row in rows])
        if final is None:
            raise RunFolderError(f"No finished stage of the run in '{folder}' saved a model; there is nothing to load yet.")
        return rows[final]
    named = [row for row in rows if row["stage"] == stage]
    if not named:
        names = [row["stage"] for row in rows]
        raise RunFolderError(
            f"The run in '{folder}' has no finished stage '{stage}'.{suggest(stage, names)} Finished stages: "
            f"{', '.join(names) or 'none'}."
        )
    if not named[-1].get("checkpoint"):
        raise RunFolderError(
            f"Stage '{stage}' of the run in '{folder}' saved no model: it is an evaluate stage (such as an "
            f"ensemble), which only evaluates models of other stages. Name one of those: "
            f"{', '.join(row['stage'] for row in with_weights) or 'none'}."
        )
    return named[-1]


def load_stage_model(
    folder: str | Path, stage: str | None = None, plugins: Plugins | None = None, *, best: bool = False
) -> SavedModel:
    """Rebuild a stage's trained model from its run folder (by default the last stage that saved a
    model: the run's final student), with the run's data: its weights after the last epoch
    (``student.pt``), or with ``best`` after the epoch the selecting split chose (``best.pt``).

    Raises:
        RunFolderError: The folder is missing, not a run folder, or has no such finished stage.
        CheckpointError: The stage's ``student.pt`` is missing, damaged or does not fit the model.
        KdframeError: ``schedule.json`` does not validate, or a component it names is not installed.
    """
    folder = Path(folder)
    row = pick_stage(folder, finished_stages(folder), stage)
    schedule, plugins, _ = load_schedule(folder / SCHEDULE_FILE, [], plugins)
    key = str(row.get("model", ""))
    if key not in schedule.models:
        raise RunFolderError(
            f"'{folder / RESULTS_FILE}' says stage '{row['stage']}' trained model '{key}', which "
            f"'{folder / SCHEDULE_FILE}' does not define. One of the two files was changed by hand; restore it."
        )
    data = load_data(schedule, plugins)
    model = build_model(schedule, plugins, data, key, load_checkpoint=False)
    field = "best_checkpoint" if best else "checkpoint"
    if best and not row.get(field):
        raise RunFolderError(
            f"Stage '{row['stage']}' of the run in '{folder}' kept no best-epoch weights (best.pt): it ran "
            "under an earlier kdframe, which did not keep them. Load its last weights instead (without best)."
        )
    checkpoint = folder / str(row[field])
    if not checkpoint.resolve().is_relative_to(folder.resolve()):
        raise RunFolderError(f"'{folder / RESULTS_FILE}' points stage '{row['stage']}' at '{row[field]}', outside the run folder. Restore the file.")
    arch = schedule.models[key].arch
    checkpoints.load_into(model, checkpoint, label=f"model '{key}' ({arch}) of stage '{row['stage']}'", expected_arch=arch)
    model.eval()
    return SavedModel(folder, str(row["stage"]), key, arch, model, data, schedule, plugins, row, checkpoint)


def training_images(data: AnyDataset, count: int, seed: int) -> Tensor:
    """A seeded random sample of ``count`` training images, ``(count, C, H, W)``, without augmentation
    (e.g. to calibrate int8 quantization)."""
    count = max(1, min(count, data.train_count))
    index = torch.randperm(data.train_count, generator=torch.Generator().manual_seed(seed))[:count]
    if isinstance(data, InMemoryDataset):
        return data.train_images.index_select(0, index.to(data.train_images.device)).cpu()
    return torch.stack([data.train[int(position)][0] for position in index])
