"""Classifier models: ``ct.convert(..., classifier_config=ct.ClassifierConfig(labels))`` and the ``classify`` op.

coremltools 9 ends such a program with ``classify(probabilities, classes)`` whose outputs are the model's: the
predicted label (``stringType`` / ``int64Type`` in the model description) and the probability dictionary
(``dictionaryType``). The runtime returns them as Core ML's Python binding does: the label as ``str`` / ``int``,
the probabilities as ``{label: float}``. References are torch's softmax and argmax on the same module.
"""

from __future__ import annotations

import sys
import warnings

import coremltools as ct
import numpy as np
import pytest
import torch

from conversions.runtime import load_model
from conversions.runtime.mil.ops import REGISTRY

STRING_LABELS = ["cat", "dog", "bird", "fish", "snake"]
INT_LABELS = [3, 141, 59, 26, 5358]  # unordered, so an index is never mistaken for a label
FEATURES = 6
# Probability tolerance. fp32 program: a 6-term dot product and a softmax in fp32, errors ~1e-7. fp16 program: input,
# weights and logits rounded to fp16 (relative 2^-11 = 4.9e-4 each; logits here are below 4, so each logit is off by
# at most ~3 * 4 * 4.9e-4 = 6e-3 absolute) and the softmax output rounded to fp16 (<= 2^-12 absolute below 1); a
# probability moves by at most p(1 - p) * 2 * 6e-3 + 2.4e-4 < 3.3e-3. Bounds: 1e-5 and 5e-3.
ATOL = {"fp32": 1e-5, "fp16": 5e-3}
# The label is compared with torch's argmax only where torch's two largest probabilities differ by more than twice
# the tolerance, so that the comparison does not hinge on rounding.
MIN_MARGIN = 0.02


class Classifier(torch.nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(FEATURES, classes)

    def forward(self, x):
        return torch.softmax(self.linear(x), dim=-1)


def convert_classifier(module, labels, precision, **config):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), torch.zeros(1, FEATURES))
        return ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, FEATURES), dtype=np.float32)],
                          classifier_config=ct.ClassifierConfig(labels, **config), convert_to="mlprogram",
                          minimum_deployment_target=ct.target.iOS17,
                          compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)


def example_inputs(module, count=12):
    """Inputs whose torch probabilities have a clear winner (margin > MIN_MARGIN)."""
    generator = torch.Generator().manual_seed(1)
    found = []
    with torch.no_grad():
        while len(found) < count:
            x = torch.randn(1, FEATURES, generator=generator) * 1.5
            top2 = torch.topk(module(x)[0], 2).values
            if float(top2[0] - top2[1]) > MIN_MARGIN:
                found.append(x)
    return found


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("labels", [STRING_LABELS, INT_LABELS], ids=["string-labels", "int64-labels"])
def test_classifier_matches_torch(labels, precision):
    module = Classifier(len(labels)).eval()
    model = load_model(convert_classifier(module, labels, precision), backend="mil")
    label_kind = "string" if isinstance(labels[0], str) else "int64"
    assert [(s.name, s.kind) for s in model.outputs] == [("classLabel", label_kind), ("classLabel_probs", "dictionary")]
    assert model.outputs[1].key_kind == label_kind
    assert "classify" in {op.op_type for op in model.function.operations}
    winners = set()
    with torch.no_grad():
        for x in example_inputs(module):
            out = model.predict({"x": x.numpy()})
            assert set(out) == {"classLabel", "classLabel_probs"}
            expected = module(x)[0].numpy().astype(np.float64)
            label, probs = out["classLabel"], out["classLabel_probs"]
            assert type(label) is type(labels[0]), f"label {label!r} is a {type(label).__name__}"
            assert label == labels[int(np.argmax(expected))]
            winners.add(label)
            assert list(probs) == labels, "the dictionary's keys are the labels, in order"
            assert all(type(k) is type(labels[0]) and type(v) is float for k, v in probs.items())
            got = np.array([probs[k] for k in labels])
            assert np.max(np.abs(got - expected)) <= ATOL[precision], (got, expected)
    assert len(winners) >= 2, f"the inputs should not all pick the same class: {winners}"


def test_custom_output_name_and_fp16_input():
    """``predicted_feature_name`` names both outputs (``<name>`` and ``<name>_probs``); an fp16 model input is fed
    like any other."""
    module = Classifier(3).eval()
    labels = STRING_LABELS[:3]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.zeros(1, FEATURES))
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, FEATURES), dtype=np.float16)],
                             classifier_config=ct.ClassifierConfig(labels, predicted_feature_name="animal"),
                             convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17)
    model = load_model(mlmodel, backend="mil")
    assert model.inputs[0].dtype == np.float16
    assert [str(s) for s in model.outputs] == ["animal: string", "animal_probs: dictionary<string, double>"]
    x = example_inputs(module, 1)[0]
    out = model.predict({"x": x.numpy()})
    with torch.no_grad():
        expected = module(x)[0].numpy()
    assert out["animal"] == labels[int(np.argmax(expected))]
    assert np.allclose([out["animal_probs"][k] for k in labels], expected, atol=ATOL["fp16"])


def test_classify_kernel_rejects_mismatched_classes():
    kernel = REGISTRY["classify"].fn
    with pytest.raises(ValueError, match=r"classify: input 'probabilities' has 3 elements, expected one per class "
                                         r"\(2 classes\)"):
        kernel(probabilities=torch.tensor([[0.2, 0.3, 0.5]]), classes=["a", "b"])


@pytest.mark.skipif(sys.platform != "darwin", reason="Apple's Core ML runtime runs on macOS only")
def test_coreml_backend_returns_the_same_kinds():
    module = Classifier(len(INT_LABELS)).eval()
    mlmodel = convert_classifier(module, INT_LABELS, "fp32")
    mil, coreml = load_model(mlmodel, backend="mil"), load_model(mlmodel, backend="coreml")
    for x in example_inputs(module, 3):
        a, b = mil.predict({"x": x.numpy()}), coreml.predict({"x": x.numpy()})
        assert a["classLabel"] == b["classLabel"] and type(b["classLabel"]) is int
        assert set(a["classLabel_probs"]) == set(b["classLabel_probs"])
        assert all(abs(a["classLabel_probs"][k] - b["classLabel_probs"][k]) < 1e-3 for k in INT_LABELS)


def test_non_array_input_is_refused_by_name():
    """Only outputs may be non-array features: a string (or int64, dictionary) input is refused, naming it."""
    from conversions.runtime.io import TensorSpec, check_feeds

    specs = [TensorSpec("text", (), np.dtype(object), kind="string")]
    with pytest.raises(NotImplementedError, match="model.mlpackage: input 'text' is a string feature; only "
                                                  "multi-array inputs are supported"):
        check_feeds(specs, {"text": "hello"}, "model.mlpackage")
