"""Tasks: the data side of blockprune (text classification, extractive QA, causal language modelling, image
classification, and the embedded offline default).

The pipeline needs only :func:`load_task` and the :class:`Task` interface; the rest is public for tests and
for users who build a task from their own records.

Example:
    >>> from blockprune.tasks import embedded_model_path, load_task
    >>> task = load_task()                                      # doctest: +SKIP
    >>> task.describe()["num_train"]                            # doctest: +SKIP
    9530
"""

from blockprune.tasks.base import DataError, FeatureDataset, PaddingCollator, Task
from blockprune.tasks.causal_lm import CausalLMCollator, CausalLMTask, group_blocks, read_documents
from blockprune.tasks.classification import ClassificationTask, TextExample, accuracy, classification_task, macro_f1
from blockprune.tasks.embedded import embedded_data_path, embedded_model_path, rotten_tomatoes_split
from blockprune.tasks.images import ImageDataset, ImageExample, ImageTask, default_image_processor, scan_image_folder
from blockprune.tasks.load import holdout, load_task
from blockprune.tasks.qa import QATask, answer_tokens, postprocess, qa_features
from blockprune.tasks.qa_data import QAExample, read_squad, squad_from_records
from blockprune.tasks.qa_metrics import exact_match, f1, normalize_answer, squad_scores

__all__ = [
    "CausalLMCollator",
    "CausalLMTask",
    "ClassificationTask",
    "DataError",
    "FeatureDataset",
    "ImageDataset",
    "ImageExample",
    "ImageTask",
    "PaddingCollator",
    "QAExample",
    "QATask",
    "Task",
    "TextExample",
    "accuracy",
    "answer_tokens",
    "classification_task",
    "default_image_processor",
    "embedded_data_path",
    "embedded_model_path",
    "exact_match",
    "f1",
    "group_blocks",
    "holdout",
    "load_task",
    "macro_f1",
    "normalize_answer",
    "postprocess",
    "qa_features",
    "read_documents",
    "read_squad",
    "rotten_tomatoes_split",
    "scan_image_folder",
    "squad_from_records",
    "squad_scores",
]
