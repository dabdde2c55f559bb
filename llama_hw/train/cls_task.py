"""`--task cls`: text classification or regression on LlamaForSequenceClassification.

Data: JSON (a list) or JSONL of `{"text": str, "label": ...}`. String labels are class names (sorted into
ids and saved in the model config); integer labels are class ids; any non-integer number makes it a
regression (`num_labels` 1). Batches are padded on the left, so the last position of every row is the
last real token, which is where the classification head reads the sequence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llama_hw.errors import DataError, UsageError
from llama_hw.train.logs import logger


@dataclass(frozen=True)
class LabelSpace:
    num_labels: int
    names: tuple[str, ...] = ()  # class names when the data labels are strings

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def config_fields(self) -> dict[str, Any]:
        """Fields for the model config: the head's size, loss and readable class names."""
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        names = self.names or tuple(str(index) for index in range(self.num_labels))
        return {
            "num_labels": self.num_labels,
            "problem_type": "single_label_classification",
            "id2label": dict(enumerate(names)),
            "label2id": {name: index for index, name in enumerate(names)},
        }

    def encode(self, label: Any) -> int | float:
        if self.is_regression:
            return float(label)
        return self.names.index(label) if self.names else int(label)

    def decode(self, prediction: int | float) -> Any:
        if self.is_regression:
            return float(prediction)
        return self.names[prediction] if self.names else int(prediction)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON list or JSONL file; each must have a string `text` and a `label`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file; check --data_path / --eval_data_path")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as err:
            raise DataError(f"{path}: invalid JSON ({err})") from err
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as err:
                    raise DataError(f"{path}: line {number}: invalid JSON ({err})") from err
    for index, record in enumerate(records):
        if not isinstance(record, dict) or "text" not in record or "label" not in record:
            raise DataError(f"{path}: record {index}: needs the keys 'text' and 'label'")
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise DataError(f"{path}: record {index}: 'text' must be a non-empty string")
        label = record["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int, float)) or (
            isinstance(label, float) and not math.isfinite(label)
        ):
            raise DataError(f"{path}: record {index}: 'label' must be a class name, a class id or a number")
    if not records:
        raise DataError(f"{path}: no records")
    return records


def label_space(records: list[dict[str, Any]], num_labels: int | None, path: str | Path) -> LabelSpace:
    """The label space the training records imply, checked against `--num_labels`."""
    labels = [record["label"] for record in records]
    if all(isinstance(label, str) for label in labels):
        names = tuple(sorted(set(labels)))
        if num_labels not in (None, len(names)):
            raise UsageError(f"--num_labels {num_labels}, but {path} has {len(names)} class names: {', '.join(names)}")
        return LabelSpace(len(names), names)
    if any(isinstance(label, str) for label in labels):
        raise DataError(f"{path}: labels mix class names and numbers; use one kind")
    if num_labels == 1 or any(isinstance(label, float) and not label.is_integer() for label in labels):
        if num_labels not in (None, 1):
            raise UsageError(f"--num_labels {num_labels}, but {path} has non-integer labels (a regression)")
        return LabelSpace(1)
    ids = [int(label) for label in labels]
    count = num_labels or max(ids) + 1
    bad = next((index for index, label in enumerate(ids) if not 0 <= label < count), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad}: label {ids[bad]} is outside 0..{count - 1} (--num_labels {count})")
    if count < 2:
        raise DataError(f"{path}: every label is 0; classification needs at least two classes")
    return LabelSpace(count)


@dataclass
class ClsData:
    labels: LabelSpace
    train_dataset: list[dict[str, Any]]
    eval_dataset: list[dict[str, Any]] | None
    data_collator: Any
    eval_records: list[dict[str, Any]] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def encode_records(records, labels: LabelSpace, tokenizer, max_length: int, path) -> list[dict[str, Any]]:
    encoded = []
    for index, record in enumerate(records):
        try:
            label = labels.encode(record["label"])
        except ValueError as err:
            raise DataError(f"{path}: record {index}: label {record['label']!r} is not a training label") from err
        ids = tokenizer(record["text"], truncation=True, max_length=max_length)["input_ids"]
        encoded.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label})
    return encoded


def build_cls_data(data_path: str, eval_data_path: str | None, tokenizer, *, max_length: int,
                   num_labels: int | None, pad_to_multiple_of: int | None = None) -> ClsData:
    from transformers import DataCollatorWithPadding

    if tokenizer.padding_side != "left":
        raise UsageError("--task cls pads on the left (the head reads the last token); drop --padding_side right")
    train_records = read_records(data_path)
    labels = label_space(train_records, num_labels, data_path)
    eval_records = read_records(eval_data_path) if eval_data_path else None
    train = encode_records(train_records, labels, tokenizer, max_length, data_path)
    evaluation = encode_records(eval_records, labels, tokenizer, max_length, eval_data_path) if eval_records else None
    lengths = [len(sample["input_ids"]) for sample in train]
    stats = {
        "records": len(train),
        "eval_records": len(evaluation or []),
        "labels": "regression" if labels.is_regression else list(labels.config_fields()["id2label"].values()),
        "truncated": sum(length >= max_length for length in lengths),
    }
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    return ClsData(labels, train, evaluation, collator, eval_records, stats)


def metrics_function(labels: LabelSpace):
    """Trainer's compute_metrics: accuracy for classes, mean squared error for regression."""

    def compute(prediction) -> dict[str, float]:
        logits = np.asarray(prediction.predictions)
        targets = np.asarray(prediction.label_ids)
        if labels.is_regression:
            return {"mse": float(np.mean((logits.reshape(-1) - targets.reshape(-1)) ** 2))}
        return {"accuracy": float(np.mean(logits.argmax(-1) == targets))}

    return compute


def predictions(logits: np.ndarray, labels: LabelSpace) -> list[Any]:
    if labels.is_regression:
        return [labels.decode(value) for value in logits.reshape(-1).tolist()]
    return [labels.decode(index) for index in logits.argmax(-1).tolist()]


def write_predictions(path: Path, records: list[dict[str, Any]], predicted: list[Any]) -> None:
    """One JSON line per record: its text, its label and the model's prediction."""
    with open(path, "w", encoding="utf-8") as handle:
        for record, value in zip(records, predicted):
            handle.write(json.dumps({"text": record["text"], "label": record["label"], "prediction": value},
                                    ensure_ascii=False) + "\n")


def predict_and_write(trainer, data: ClsData, path: Path, is_main: bool) -> dict[str, float]:
    """Predict the eval records, write `path` (JSONL) on the main process, return the metrics."""
    output = trainer.predict(data.eval_dataset)
    if is_main:
        write_predictions(path, data.eval_records, predictions(np.asarray(output.predictions), data.labels))
        logger.info(f"predictions: {path} ({', '.join(f'{k} {v:.4g}' for k, v in output.metrics.items())})")
    return output.metrics
