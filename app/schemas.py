"""API response models (the request body of ``POST /jobs`` is :class:`tuner.spec.JobSpec` itself)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.models import JobStatus

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    format: str
    size_bytes: int
    sha256: str
    rows: int
    columns: int
    feature_names: list[str]
    target: str | None
    task: Literal["classification", "regression"]
    class_counts: dict[str, int] | None
    missing_values: int
    created_at: datetime


class Progress(BaseModel):
    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    config_failed: int = 0
    running: int = 0
    waiting: int = 0
    counted: int = 0


class BestTrial(BaseModel):
    number: int
    params: dict[str, Any]
    value: float | None
    best_epoch: int | None = None


class JobSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: JobStatus
    dataset_id: str | None
    n_trials: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class JobPublic(JobSummary):
    study_name: str
    deadline: datetime | None
    progress: Progress
    best_trial: BestTrial | None
    test_metrics: dict[str, Any] | None
    model_path: str | None = None
    spec: dict[str, Any]
    failures: int = 0  # job-level failures so far (start, data preparation, finalisation, a worker lost in one)
    last_error: str | None = None  # the latest of them; the job fails for good at TUNER_JOB_MAX_FAILURES
    version: int = 0  # grows with every change of the job (trial end, status, cancel); part of the ETag
    updated_at: datetime | None = None  # last change of that summary


class TrialPublic(BaseModel):
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    intermediate_values: dict[int, float]
    val_curve: Any = None
    train_curve: Any = None
    best_epoch: int | None = None
    val_metrics: dict[str, Any] | None = None
    val_metrics_folds: dict[str, int] | None = Field(
        default=None, description="K-fold: per metric, how many folds defined it, when not all did (its mean is then null)")
    duration_s: float | None = None
    worker: str | None = None
    device: str | None = None
    fail_reason: str | None = None
    interrupted: bool = False
    retry_of: int | None = None
    datetime_start: datetime | None
    datetime_complete: datetime | None


# ------------------------------------------------------------------------------ results: /jobs/{id}/...
class PredictRequest(BaseModel):
    """``{"rows": [[...], ...]}`` in the upload's raw column order, or ``[{"column": value, ...}, ...]``."""

    rows: list[list[Any] | dict[str, Any]]


class ClassPrediction(BaseModel):
    label: Any
    probabilities: dict[str, float]  # keyed by str(label)


class ValuePrediction(BaseModel):
    value: float  # in the target's units


class Predictions(BaseModel):
    job_id: str
    task: Literal["classification", "regression"]
    classes: list[Any] | None
    n_rows: int
    predictions: list[ClassPrediction] | list[ValuePrediction]


class FoldResult(BaseModel):
    values: list[float]
    mean: float | None
    std: float | None
    best_epochs: list[int] | None = None


class BestResult(BaseModel):
    trial: int
    params: dict[str, Any]
    value: float | None
    objective: str
    direction: Literal["minimize", "maximize"]
    folds: FoldResult | None = None
    best_epoch: int | None = None
    final_epochs: int | None = None
    val_metrics: dict[str, Any] | None = None
    val_metrics_folds: dict[str, int] | None = None


class ConfusionMatrix(BaseModel):
    labels: list[str]
    matrix: list[list[int]]


class TestResult(BaseModel):
    metrics: dict[str, Any]
    n_test: int | None
    confusion_matrix: ConfusionMatrix | None = None


class TrialStats(BaseModel):
    total: int
    by_state: dict[str, int]
    by_failure_cause: dict[str, int]


class Timing(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wall_s: float | None
    trials_s: float


class Reproduce(BaseModel):
    """The ``tuner run`` command that repeats the job (``exact``: the same trials, params and test metrics)."""

    command: str
    argv: list[str]
    exact: bool
    why: str
    spec: dict[str, Any]
    data_file: dict[str, Any] | None
    how: str


class ResultBundle(BaseModel):
    job_id: str
    name: str
    status: JobStatus
    error: str | None
    best: BestResult | None
    test: TestResult | None
    model_url: str | None
    split: dict[str, Any]
    dataset: dict[str, Any]
    versions: dict[str, str | None]
    versions_recorded: bool
    timing: Timing
    trials: TrialStats
    reproduce: Reproduce
    spec: dict[str, Any]
