"""Tasks: the data side of blockprune (text classification, extractive QA, the embedded offline default).

The pipeline needs only :func:`load_task` and the :class:`Task` interface; the rest is public for tests and
for users who build a task from their own records.

Example:
    >>> from blockprune.tasks import embedded_model_path, load_task
    >>> task = load_task()                                      # doctest: +SKIP
    >>> task.describe()["num_train"]                            # doctest: +SKIP
    10824
"""

from .base import DataError, FeatureDataset, PaddingCollator, Task
from .classification import ClassificationTask, TextExample, accuracy, classification_task, macro_f1
from .embedded import embedded_data_path, embedded_model_path, rotten_tomatoes_split
from .load import holdout, load_task
from .qa import QATask, answer_tokens, postprocess, qa_features
from .qa_data import QAExample, read_squad, squad_from_records
from .qa_metrics import exact_match, f1, normalize_answer, squad_scores

__all__ = [
    "ClassificationTask",
    "DataError",
    "FeatureDataset",
    "PaddingCollator",
    "QAExample",
    "QATask",
    "Task",
    "TextExample",
    "accuracy",
    "answer_tokens",
    "classification_task",
    "embedded_data_path",
    "embedded_model_path",
    "exact_match",
    "f1",
    "holdout",
    "load_task",
    "macro_f1",
    "normalize_answer",
    "postprocess",
    "qa_features",
    "read_squad",
    "rotten_tomatoes_split",
    "squad_from_records",
    "squad_scores",
]
