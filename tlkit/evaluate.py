"""Evaluation metrics as pure numpy functions over labels and probabilities.

Shared by the training run, the explorer and the reports.

Example:

```python
import numpy as np
from tlkit.evaluate import classification_report

probs = np.eye(10)[[0, 1, 2, 2]]
report = classification_report(np.array([0, 1, 2, 3]), probs, class_names=[str(i) for i in range(10)])
report["test_accuracy"]  # 0.75
```
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray, class_names) -> list[dict]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    true_positives = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, actual)
    ]


def cross_entropy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    picked = probabilities[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def classification_report(y_true: np.ndarray, probabilities: np.ndarray, class_names) -> dict:
    """Accuracy, loss, confusion matrix, per-class and macro metrics."""
    y_true = np.asarray(y_true).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    per_class = per_class_metrics(matrix, class_names)
    return {
        "test_accuracy": float(np.mean(y_pred == y_true)),
        "test_loss": cross_entropy(y_true, probabilities),
        "macro_f1": float(np.mean([row["f1"] for row in per_class])),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "class_names": list(class_names),
        "num_test_images": int(len(y_true)),
    }


def misclassified(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Positions, true and predicted labels and confidence of the wrong predictions."""
    y_pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    return {"position": wrong, "true": np.asarray(y_true)[wrong].astype("int32"),
            "predicted": y_pred[wrong].astype("int32"),
            "confidence": probabilities[wrong, y_pred[wrong]].astype("float32")}
