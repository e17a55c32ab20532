"""The model card of a release directory (conversions/model_card.py), on a synthetic release built here.

The release is built from literal figures (``FIGURES``): the tests assert that those figures, not whatever the
renderer produced, appear in the card next to their bounds. ``make_release`` is also the fixture builder of
tests/test_publish.py: a directory as ``coreml-parity export`` writes it, with correct digests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conversions.model_card import ReleaseFormatError, parse_metadata, render_card, write_card

FAMILY = "silero-vad"
COMPONENTS = ("encoder", "unified-36ms")
VERSIONS = {"coremltools": "9.0", "torch": "2.13.0+cpu", "numpy": "2.2.6", "silero-vad": "6.2.3",
            "coreml-parity": "0.1.0"}
CLIP_SHA = "5" * 64
COMMIT = "abc1234def5678abc1234def5678abc1234def56"
# component -> output -> (max_abs, atol, psnr_db, psnr_min_db)
FIGURES = {
    "encoder": {"features": (0.031, 0.06, 58.2, 52.0)},
    "unified-36ms": {"probability": (0.0019, 0.004, 74.0, 64.0), "hidden_state_out": (0.0071, None, 66.3, -math.inf)},
}
TASK = {"decision_agreement": (0.9987, 0.99), "segment_f1": (0.95, 0.9)}
# component -> (baseline weight bytes, weight bytes, quality vs fp16 package, quality vs torch)
QUANT = {"encoder": (262144, 69632, 0.9981, 0.9943), "unified-36ms": (524288, 139264, 0.9975, 0.9932)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_name(component: str, strategy: str | None) -> str:
    return f"{FAMILY}-{component}{'-' + strategy if strategy else ''}.mlpackage"


def metadata_for(component: str, strategy: str | None = "palettize-8bit") -> dict:
    """A component's metadata.json as export writes it, with the figures of ``FIGURES``/``TASK``/``QUANT``."""
    outputs = FIGURES[component]
    parity_outputs = {
        name: {"metrics": {"max_abs": err, "psnr_db": psnr, "max_rel": 0.01, "quality": 0.999},
               "bound": {"atol": atol, "rtol": 0.0, "psnr_min_db": floor, "why": "clip: measured"}}
        for name, (err, atol, psnr, floor) in outputs.items()}
    task = {k: v for k, (v, _) in TASK.items()} if component == "unified-36ms" else {}
    task_bounds = {k: b for k, (_, b) in TASK.items()} if component == "unified-36ms" else {}
    checks = [{"variant": "mil-fp16", "backend": "mil", "compute_units": None, "kind": "clip", "calls": 131,
               "passed": True, "outputs": parity_outputs, "task": task, "task_bounds": task_bounds,
               "baseline": {"entry": f"test_parity[{FAMILY}/{component}/mil-fp16]", "failures": []},
               "failure": None}]
    compression = None
    if strategy:
        before, after, q_base, q_torch = QUANT[component]
        compression = {"strategy": strategy, "description": "8-bit k-means palettization per tensor",
                       "config": {"global": {"nbits": 8}}, "weight_bytes": after,
                       "baseline_weight_bytes": before, "compression_ratio": before / after}
        checks.append({"variant": "mil-fp16", "backend": "mil", "compute_units": None, "kind": "quantization",
                       "passed": True,
                       "outputs": {name: {"quality_vs_baseline": q_base, "quality_vs_torch": q_torch,
                                          "psnr_vs_torch_db": 50.1, "psnr_vs_baseline_db": 55.0}
                                   for name in outputs},
                       "task": task, "task_bounds": task_bounds, "baseline": None, "failure": None})
    stateful = component == "unified-36ms"
    return {
        "family": FAMILY, "component": component, "package": package_name(component, strategy),
        "compiled": None, "compiled_note": "not compiled: coremltools.utils.compile_model needs macOS (this is linux)",
        "inputs": [{"name": "audio_input", "shape": [1, 576], "dtype": "float32"}]
        + ([{"name": "hidden_state", "shape": [2, 1, 128], "dtype": "float32"}] if stateful else []),
        "outputs": [{"name": name, "shape": [1, 1] if name == "probability" else [2, 1, 128], "dtype": "float16"}
                    for name in outputs],
        "state": {"hidden_state_out": "hidden_state"} if stateful else {},
        "audio_ms_per_call": 32.0 if stateful else None,
        "precision": "fp16", "compute_precision": "fp16", "deployment_target": "iOS17",
        "compression": compression, "tool_versions": VERSIONS, "checks": checks, "passed": True,
    }


def release_for(strategy: str | None = "palettize-8bit", **source) -> dict:
    """release.json without ``files`` (what export passes to write_card before hashing)."""
    src = {"name": "Silero VAD v6", "license": "mit", "license_name": None, "license_link": None,
           "base_model": None, "url": "https://github.com/snakers4/silero-vad",
           "weights": "the silero-vad 6.2.3 package's weights", "tags": ["voice-activity-detection", "audio"],
           "pipeline_tag": "voice-activity-detection"}
    src.update(source)
    return {
        "format": 1, "family": FAMILY, "source": src, "precision": "fp16", "strategy": strategy,
        "strategy_description": "8-bit k-means palettization per tensor" if strategy else None, "recipe": None,
        "deployment_target": "iOS17", "tool_versions": VERSIONS,
        "clip": {"path": "tests/data/speech.wav", "sha256": CLIP_SHA, "seconds": 4.2, "sample_rate": 16000},
        "platform": {"system": "Linux", "machine": "x86_64", "python": "3.11.7"},
        "git_commit": COMMIT, "created_at": "2026-12-07T07:00:00+00:00", "backends": ["mil-fp16"],
        "components": list(COMPONENTS), "passed": True,
    }


def make_release(root: Path, strategy: str | None = "palettize-8bit", card: bool = True, **source) -> Path:
    """A release directory as export writes it: packages (a Manifest.json and a weights file each), metadata,
    README.md (through write_card, as export does), then release.json with the sha256 of every other file."""
    root.mkdir(parents=True, exist_ok=True)
    release = release_for(strategy, **source)
    for i, component in enumerate(COMPONENTS):
        meta = metadata_for(component, strategy)
        package = root / component / meta["package"]
        weights = package / "Data" / "com.apple.CoreML" / "weights"
        weights.mkdir(parents=True)
        (package / "Manifest.json").write_text(json.dumps({"fileFormatVersion": "1.0.0", "component": component}))
        (weights / "weight.bin").write_bytes(bytes(range(256)) * (4 + i))
        (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x08\x09spec" + component.encode())
        (root / component / "metadata.json").write_text(json.dumps(meta, indent=2))
    if card:
        write_card(root, release=release)
    release["files"] = {rel: sha256(p) for p in sorted(root.rglob("*"))
                        if p.is_file() and (rel := p.relative_to(root).as_posix()) not in ("README.md", "release.json")}
    (root / "release.json").write_text(json.dumps(release, indent=2))
    return root


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---- the card ----------------------------------------------------------------------------------------------------
def test_card_round_trips_through_model_card_load(tmp_path):
    root = make_release(tmp_path / "rel")
    card = ModelCard.load(root / "README.md")
    assert card.data.license == "mit"
    assert card.data.library_name == "coreml"
    assert card.data.tags == ["voice-activity-detection", "audio", "coreml", "core-ml", "coreml-parity", FAMILY,
                              "fp16", "palettize-8bit"]
    assert card.data.pipeline_tag == "voice-activity-detection"
    assert card.data.base_model is None
    assert card.data.license_name is None and card.data.license_link is None
    text = card.text
    assert text.lstrip().startswith("# Silero VAD v6")
    # the parity rows: the synthetic figures next to their bounds
    assert "| unified-36ms | probability | clip (131 calls) | mil / mil-fp16 | 0.0019 | ≤ 0.004 | 74.0 dB | " \
           "≥ 64.0 dB | passed |" in text
    assert "| encoder | features | clip (131 calls) | mil / mil-fp16 | 0.031 | ≤ 0.06 | 58.2 dB | ≥ 52.0 dB | " \
           "passed |" in text
    # no elementwise gate and no PSNR floor: both shown as "—"
    assert "| unified-36ms | hidden_state_out | clip (131 calls) | mil / mil-fp16 | 0.0071 | — | 66.3 dB | — | " \
           "passed |" in text
    # task metrics against their minimums
    assert "| unified-36ms | clip | mil / mil-fp16 | decision_agreement | 0.9987 | ≥ 0.99 | passed |" in text
    assert "| unified-36ms | clip | mil / mil-fp16 | segment_f1 | 0.95 | ≥ 0.9 | passed |" in text


def test_card_io_contracts_and_provenance(tmp_path):
    root = make_release(tmp_path / "rel")
    text = ModelCard.load(root / "README.md").text
    package = package_name("unified-36ms", "palettize-8bit")
    size = sum(p.stat().st_size for p in (root / "unified-36ms" / package).rglob("*") if p.is_file())
    assert f"- package: `unified-36ms/{package}` ({size / 1e3:.1f} kB, {size:,} B)" in text
    assert "| input | audio_input | [1, 576] | float32 |" in text
    assert "| output | probability | [1, 1] | float16 |" in text
    assert "`hidden_state_out` → `hidden_state`" in text
    assert "- audio per call: 32 ms" in text
    assert "not compiled: coremltools.utils.compile_model needs macOS" in text
    # how to run (Swift, Python on macOS, the portable runtime), shown on the component that carries state
    assert "MLModel(contentsOf:" in text and f"xcrun coremlcompiler compile unified-36ms/{package} build/" in text
    assert '"hidden_state": try MLMultiArray(shape: [2, 1, 128], dataType: .float32),' in text
    assert f'ct.models.MLModel("unified-36ms/{package}"' in text
    assert '"audio_input": np.zeros((1, 576), dtype=np.float32),' in text
    assert 'feeds["hidden_state"] = out["hidden_state_out"]' in text
    assert f"python -m conversions predict unified-36ms/{package} --input audio_input=audio_input.npy " \
           "--input hidden_state=hidden_state.npy --output out.npz" in text
    # how the figures were obtained
    assert CLIP_SHA in text and "tests/data/speech.wav" in text and "4.2 s, 16000 Hz" in text
    assert COMMIT in text and "2026-12-07T07:00:00+00:00" in text
    for tool, version in VERSIONS.items():
        assert f"| {tool} | {version} |" in text
    assert "backends that ran: mil-fp16" in text


def test_quantization_table_only_with_a_strategy(tmp_path):
    compressed = ModelCard.load(make_release(tmp_path / "q") / "README.md").text
    before, after, q_base, q_torch = QUANT["encoder"]
    assert "## Quantization" in compressed
    assert (f"| encoder | palettize-8bit | {before:,} B → {after:,} B | {before / after:.2f}× | features | {q_base} | "
            f"{q_torch} | 50.1 dB | mil / mil-fp16 | passed |") in compressed

    plain = ModelCard.load(make_release(tmp_path / "p", strategy=None) / "README.md")
    assert "## Quantization" not in plain.text
    assert "quality vs fp16 package" not in plain.text
    assert "palettize-8bit" not in plain.data.tags


def test_other_license_carries_its_name_and_link(tmp_path):
    root = make_release(tmp_path / "rel", license="other", license_name="silero-custom",
                        license_link="https://example.org/LICENSE", base_model="snakers4/silero-vad")
    data = ModelCard.load(root / "README.md").data
    assert (data.license, data.license_name, data.license_link) == ("other", "silero-custom",
                                                                    "https://example.org/LICENSE")
    assert data.base_model == "snakers4/silero-vad"


def test_known_license_drops_a_stray_license_link(tmp_path):
    data = ModelCard.load(make_release(tmp_path / "rel", license_link="https://x.invalid") / "README.md").data
    assert data.license == "mit" and data.license_link is None


def test_other_license_without_name_is_refused():
    release = release_for(license="other")
    meta = {c: metadata_for(c) for c in COMPONENTS}
    with pytest.raises(ReleaseFormatError, match=r"release\.json: key 'source\.license_name'"):
        render_card(release, meta)


def test_render_is_deterministic_and_write_is_atomic(tmp_path):
    root = make_release(tmp_path / "rel")
    first = (root / "README.md").read_bytes()
    write_card(root)  # now from release.json
    assert (root / "README.md").read_bytes() == first
    assert sorted(p.name for p in root.iterdir()) == ["README.md", "encoder", "release.json", "unified-36ms"]


def test_write_card_without_release_json_needs_the_manifest(tmp_path):
    root = make_release(tmp_path / "rel", card=False)
    (root / "release.json").unlink()
    with pytest.raises(ReleaseFormatError, match="no release.json"):
        write_card(root)
    assert write_card(root, release=release_for()) == root / "README.md"


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.pop("outputs"), "outputs"),
    (lambda m: m["checks"][0]["outputs"]["probability"]["bound"].pop("atol"),
     "checks[0].outputs.probability.bound.atol"),
    (lambda m: m["checks"][0]["outputs"]["probability"]["metrics"].update(psnr_db="high"),
     "checks[0].outputs.probability.metrics.psnr_db"),
    (lambda m: m.update(passed="yes"), "passed"),
    (lambda m: m["inputs"][0].update(shape=None), "inputs[0].shape"),
    (lambda m: m.update(checks={"clip": {}}), "checks"),
])
def test_malformed_metadata_names_file_and_key(tmp_path, edit, key):
    root = make_release(tmp_path / "rel")
    path = root / "unified-36ms" / "metadata.json"
    meta = load_json(path)
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError) as info:
        write_card(root)
    assert "unified-36ms/metadata.json" in str(info.value)
    assert repr(key) in str(info.value)


def test_malformed_release_names_the_key(tmp_path):
    release = release_for()
    del release["clip"]["sha256"]
    with pytest.raises(ReleaseFormatError, match=r"release\.json: key 'clip\.sha256' is missing"):
        render_card(release, {c: metadata_for(c) for c in COMPONENTS})


def test_metadata_filed_under_the_wrong_component(tmp_path):
    root = make_release(tmp_path / "rel")
    path = root / "encoder" / "metadata.json"
    path.write_text(json.dumps(metadata_for("unified-36ms")))
    with pytest.raises(ReleaseFormatError, match=r"encoder/metadata\.json: key 'component' is 'unified-36ms'"):
        write_card(root)


def test_strict_json_spelling_of_infinity_is_accepted():
    meta = copy.deepcopy(metadata_for("unified-36ms"))
    meta["checks"][0]["outputs"]["hidden_state_out"]["bound"]["psnr_min_db"] = "-inf"
    parsed = parse_metadata(meta, "unified-36ms/metadata.json")
    assert parsed.checks[0].parity[1].psnr_min_db == -math.inf


def test_a_failed_check_shows_as_failed(tmp_path):
    release = release_for()
    release["passed"] = False
    meta = {c: metadata_for(c) for c in COMPONENTS}
    meta["encoder"]["checks"][0].update(passed=False, failure="features: max abs error 0.09 > 0.06")
    meta["encoder"]["passed"] = False
    text = render_card(release, meta).text
    assert "**Not every check passed**" in text
    assert "- `encoder` clip on mil / mil-fp16: features: max abs error 0.09 > 0.06" in text


def test_left_out_components_and_a_dirty_checkout_are_said(tmp_path):
    release = release_for()
    release.update(git_dirty=True, failed_components={"stft": "mil-fp16: magnitude max abs error 0.02 > 0.01"})
    text = render_card(release, {c: metadata_for(c) for c in COMPONENTS}).text
    assert "Left out of this release because they did not pass: `stft` (mil-fp16: magnitude max abs error 0.02 > " \
           "0.01)." in text
    assert f"- source commit: `{COMMIT}` (with uncommitted changes)" in text
