"""The classifier head: ``classify`` (MIL ``classify``).

https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.classify

``ct.convert(..., classifier_config=ct.ClassifierConfig(labels))`` ends the program with
``classify(probabilities=<fp32 tensor>, classes=<list of str or int64, inline>)``; its two outputs are the
model's outputs: the predicted label (MIL ``string`` or ``int64`` scalar; the model description says ``stringType``
or ``int64Type``) and the probability dictionary (``dict<label, fp64>``, ``dictionaryType`` with string or int64
keys). The probabilities tensor may have any shape whose element count equals the number of classes (the
converter's is ``[1, K]``); it is read flat, in order.

The kernel returns them the way Core ML's Python binding does: the label as a Python ``str`` or ``int``, the
dictionary as ``{label: float}``. The predicted label is the class of the largest probability; on an exact tie
the first such class wins (Core ML does not document its tie-break). The probabilities are passed through as they
are, not normalised.
"""

from __future__ import annotations

import torch

from . import register
from ._util import floating


@register("classify")
def classify(probabilities, classes):
    probs = floating(probabilities).reshape(-1)
    labels = list(classes) if isinstance(classes, (list, tuple)) else None
    if labels is None:
        raise ValueError(f"classify: input 'classes' must be a list of labels, got {type(classes).__name__}")
    if len(labels) != probs.numel():
        raise ValueError(f"classify: input 'probabilities' has {probs.numel()} elements, expected one per class "
                         f"({len(labels)} classes)")
    if not labels:
        raise ValueError("classify: input 'classes' is empty")
    labels = [_label(v) for v in labels]
    if bool(torch.isnan(probs).any()):
        raise ValueError("classify: input 'probabilities' holds NaN")
    values = probs.double().tolist()
    best = int(torch.argmax(probs).item())  # first maximum on ties
    return labels[best], dict(zip(labels, values))


def _label(value):
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise ValueError(f"classify: input 'classes' must hold str or int64 labels, got {type(value).__name__}")
    return int(value)
