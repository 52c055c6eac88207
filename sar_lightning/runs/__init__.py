"""The run folder, owned in one place: its layout, status and lock (``layout``), result rows and their schema
(``results``), the sweep manifests beside the runs (``history``) and the TensorBoard tags (``tags``)."""

from sar_lightning.runs.history import (
    SWEEPS,
    manifest_path,
    merge_history,
    read_manifests,
    superseded,
    sweep_history,
    sweep_record,
)
from sar_lightning.runs.layout import (
    CHECKPOINTS,
    CONFIG,
    DONE,
    LAST,
    LOG,
    PROGRESS,
    RESULTS,
    SAMPLES,
    TB,
    THREADS,
    RunBusy,
    RunDir,
    RunStopped,
)
from sar_lightning.runs.results import (
    METRIC_COLUMNS,
    RENAMED_COLUMNS,
    RESULT_COLUMNS,
    RESULT_SCHEMA_VERSION,
    SETTING_KEYS,
    append_results,
    migrate_row,
    read_results,
    result_row,
    results_text,
    setting_id,
)
from sar_lightning.runs.tags import fd_tag

__all__ = ["CHECKPOINTS", "CONFIG", "DONE", "LAST", "LOG", "METRIC_COLUMNS", "PROGRESS", "RENAMED_COLUMNS",
           "RESULTS", "RESULT_COLUMNS", "RESULT_SCHEMA_VERSION", "RunBusy", "RunDir", "RunStopped", "SAMPLES",
           "SETTING_KEYS", "SWEEPS", "TB", "THREADS", "append_results", "fd_tag", "manifest_path", "merge_history",
           "migrate_row", "read_manifests", "read_results", "result_row", "results_text", "setting_id", "superseded",
           "sweep_history", "sweep_record"]
