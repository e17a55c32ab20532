"""The offline tiny Parakeet TDT model is committed data, the same bits on every CPU.

Fitting it at test time gave another model on each machine (torch's AVX512, AVX2 and default kernels round the 80
Adam steps differently), so its weights and tokenizer are committed under ``conversions/models/parakeet_tdt/tiny/``
(``scripts/fit_tiny_parakeet.py`` writes them) and the ``.nemo`` is assembled from them. Checked here:

- the committed files match their manifest, which describes this module's tiny model;
- a process running torch's portable kernels (``ATEN_CPU_CAPABILITY=default``) builds the same weights as this one,
  the weights the manifest records, without training anything;
- an altered committed file is refused with an error naming it;
- a corrupted cached ``.nemo`` is rebuilt (with a warning), never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nemo.collections.asr", reason="NeMo is not installed: pip install -e '.[parakeet]'")

from conversions.export import weights_digest  # noqa: E402
from conversions.models.parakeet_tdt import nemo_models as nm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest():
    return nm.verify_tiny_files()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny model's ``.nemo`` built in this process into a fresh cache, and the restored model's digest."""
    path = nm.tiny_parakeet_tdt_path(tmp_path_factory.mktemp("tiny-cache"))
    return path, weights_digest(nm.load_nemo(path))


# ---- (a) the committed files ---------------------------------------------------------------------------------------
def test_committed_files_match_the_manifest(manifest):
    assert set(manifest["files"]) == set(nm.COMMITTED_FILES)
    for name, sha in manifest["files"].items():
        assert nm._sha256(nm.TINY_DIR / name) == sha, name
    assert (manifest["scale"], manifest["seed"]) == (nm.TINY_SCALE, 0)
    assert manifest["fit"]["text"] == manifest["transcript"] == nm.FIT_TEXT
    assert (manifest["fit"]["steps"], manifest["fit"]["lr"]) == (nm.FIT_STEPS, nm.FIT_LR)
    assert manifest["cpu_capability"] and manifest["torch"] and manifest["nemo"]
    assert min(manifest["min_token_margin"], manifest["min_duration_margin"]) > 1.0


def test_committed_weights_are_float32_with_int64_counters():
    with np.load(nm.TINY_DIR / nm.WEIGHTS_FILE, allow_pickle=False) as npz:
        dtypes = {name: npz[name].dtype for name in npz.files}
    assert {str(d) for d in dtypes.values()} == {"float32", "int64"}
    assert all(name.endswith("num_batches_tracked") for name, d in dtypes.items() if d == np.int64)
    assert any(name.endswith("running_var") for name in dtypes), "batch-norm statistics must be committed"


# ---- (b) the same bits under torch's portable kernels, nothing trained --------------------------------------------
_CHILD = textwrap.dedent("""
    import json, sys
    import torch
    from conversions.export import weights_digest
    from conversions.models.parakeet_tdt import nemo_models as nm
    model = nm.tiny_parakeet_tdt(sys.argv[1])
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "digest": weights_digest(model)}))
""")


def test_default_kernels_build_the_same_weights(tmp_path, monkeypatch, manifest, built):
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "default")], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # meanwhile, in this process: the committed model is assembled without training anything
        def refuse(*args, **kwargs):
            raise AssertionError("the committed tiny model must not be trained at run time")

        monkeypatch.setattr(nm, "fit_to_utterance", refuse)
        monkeypatch.setattr(nm, "_train_tokenizer", refuse)
        path = nm.tiny_parakeet_tdt_path(tmp_path / "native")
        here = weights_digest(nm.load_nemo(path))
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["capability"] == "DEFAULT"
    assert result["digest"] == here == built[1] == manifest["weights_digest"]


def test_committed_model_keeps_the_tokenizer(built):
    model = nm.load_nemo(built[0])
    ids = model.tokenizer.text_to_ids(nm.FIT_TEXT)
    assert ids and model.tokenizer.ids_to_text(ids) == nm.FIT_TEXT and model.tokenizer.vocab_size == 128


# ---- (c) an altered committed file is refused -------------------------------------------------------------------
@pytest.mark.parametrize("name", [*nm.COMMITTED_FILES, "missing weights.npz", nm.MANIFEST_FILE])
def test_tampered_committed_file_is_refused(tmp_path, monkeypatch, name):
    copy = tmp_path / "tiny"
    shutil.copytree(nm.TINY_DIR, copy)
    if name.startswith("missing "):
        name = name.split()[1]
        (copy / name).unlink()
        expected = f"{name} is missing"
    elif name == nm.MANIFEST_FILE:
        data = json.loads((copy / name).read_text())
        data["seed"] = 1
        (copy / name).write_text(json.dumps(data))
        expected = f"{name} describes scale"
    else:
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        expected = f"{name} does not match"
    monkeypatch.setattr(nm, "TINY_DIR", copy)
    with pytest.raises(nm.TinyModelDataError, match=expected.replace(".", r"\.")) as info:
        nm.tiny_parakeet_tdt_path(tmp_path / "cache")
    assert str(copy / name) in str(info.value)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.nemo"))


# ---- (d) a corrupted cache is rebuilt, not trusted ---------------------------------------------------------------
@pytest.mark.parametrize("damage", ["corrupted", "no sidecar"])
def test_corrupted_cached_nemo_is_rebuilt(tmp_path, built, damage):
    cached = tmp_path / built[0].name
    shutil.copyfile(built[0], cached)
    shutil.copyfile(nm._sidecar(built[0]), nm._sidecar(cached))
    assert nm.tiny_parakeet_tdt_path(tmp_path) == cached  # intact: trusted as it is
    if damage == "corrupted":
        cached.write_bytes(cached.read_bytes()[:1000])
    else:
        nm._sidecar(cached).unlink()
    with pytest.warns(UserWarning, match="does not match the digest recorded when it was built"):
        path = nm.tiny_parakeet_tdt_path(tmp_path)
    assert path == cached and nm._cached_ok(path) is None
    assert weights_digest(nm.load_nemo(path)) == built[1]
