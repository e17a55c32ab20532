"""``coreml-parity publish`` (conversions/publish.py) on synthetic release directories, without any network.

The upload tests keep ``HfApi.upload_folder`` real — its listing of the folder, its ignore patterns, our
``allow_patterns``, the ``CommitOperationAdd`` it builds, its commit message plumbing — and replace only the calls
that would leave the machine: ``create_repo``, ``create_branch``, ``_validate_yaml`` (a POST of the card to the
Hub) and, at the bottom, ``create_commit`` (upload_folder's single-commit path, taken when hf_xet is disabled) or
the xet pipeline's own preupload/commit functions (its default path when hf_xet is installed). On top of that,
huggingface_hub's offline mode is on for every test: any HTTP request that slipped through would raise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, constants
from huggingface_hub.hf_api import RepoUrl

import conversions.publish as pub
from conversions.publish import PublishRefused, add_parser, plan_upload, publish, run, verify_release
from tests.test_model_card import COMPONENTS, FAMILY, make_release, package_name, sha256

REPO = "org/silero-vad-coreml"
ENDPOINT = constants.ENDPOINT  # CommitInfo only parses Hub URLs; the offline guard keeps requests from leaving
MESSAGE = (f"coreml-parity export of {FAMILY} (Silero VAD v6) palettize-8bit: {len(COMPONENTS)} components, "
           "coremltools 9.0, torch 2.13.0")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """huggingface_hub's own guard: with offline mode on, every HTTP request it makes raises."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def release(tmp_path) -> Path:
    return make_release(tmp_path / "silero-vad")


def manifest(root: Path) -> dict:
    return json.loads((root / "release.json").read_text())


def release_files(root: Path) -> set[str]:
    """What must be uploaded: every file release.json lists, plus itself and the card."""
    return set(manifest(root)["files"]) | {"release.json", "README.md"}


def rewrite_evidence(root: Path, rel: str, data: dict) -> None:
    """Write a file *and* update its digest in release.json: what an export that recorded this would have
    written (so the refusal under test is the verdict, not the digest)."""
    (root / rel).write_text(json.dumps(data))
    release = manifest(root)
    release["files"][rel] = sha256(root / rel)
    (root / "release.json").write_text(json.dumps(release))


class RecordingApi(HfApi):
    """An ``HfApi`` whose calls that would reach the Hub are recorded. ``upload_folder`` is inherited unchanged."""

    def __init__(self):
        super().__init__(endpoint=ENDPOINT, token="hf_not_a_real_token")
        self.calls: list[tuple] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"{ENDPOINT}/{repo_id}", endpoint=ENDPOINT)

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def _validate_yaml(self, content, **kwargs):
        # the real one POSTs the card to the Hub's /api/validate-yaml; parse it here instead
        self.calls.append(("validate_yaml", ModelCard(content).data.to_dict()))

    def create_commit(self, repo_id, operations, **kwargs):
        operations = list(operations)
        self.calls.append(("create_commit", repo_id, operations, kwargs))
        pr_url = f"{ENDPOINT}/{repo_id}/discussions/7" if kwargs.get("create_pr") else None
        return CommitInfo(commit_url=f"{ENDPOINT}/{repo_id}/commit/{'a' * 40}", commit_message=kwargs["commit_message"],
                          commit_description=kwargs.get("commit_description") or "", oid="a" * 40, pr_url=pr_url)

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class NoNetwork:
    """An api that fails the test on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"dry run used the Hub API ({name})")


def check_operations(root: Path, operations) -> None:
    """Exactly the release's files, as CommitOperationAdd, each with the bytes on disk."""
    assert all(type(op) is CommitOperationAdd for op in operations)
    paths = [op.path_in_repo for op in operations]
    assert sorted(paths) == sorted(release_files(root))
    for op in operations:
        with op.as_file() as f:
            assert f.read() == (root / op.path_in_repo).read_bytes(), op.path_in_repo


# ---- the upload, through huggingface_hub's own commit-operation layer ----------------------------------------------
def test_upload_is_one_upload_folder_commit_of_exactly_the_release(release, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # upload_folder's single-commit path: create_commit
    # upload_folder skips these; so must verification (they are not part of the release, and are not sent)
    (release / ".git").mkdir()
    (release / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (release / ".cache" / "huggingface").mkdir(parents=True)
    (release / ".cache" / "huggingface" / "upload.lock").write_text("")
    api = RecordingApi()

    result = publish(release, REPO, revision="v6-palettized", private=True, api=api)

    assert api.names() == ["create_repo", "create_branch", "validate_yaml", "create_commit"]
    assert api.calls[0] == ("create_repo", REPO, {"repo_type": "model", "exist_ok": True, "private": True})
    assert api.calls[1] == ("create_branch", REPO, {"branch": "v6-palettized", "repo_type": "model",
                                                    "exist_ok": True})
    assert api.calls[2][1]["license"] == "mit"  # the card that was uploaded parses, with its metadata
    _, repo, operations, kwargs = api.calls[3]
    assert repo == REPO
    check_operations(release, operations)
    assert [op.path_in_repo for op in operations] == [op.path_in_repo for op in plan_upload(release)]
    assert kwargs["revision"] == "v6-palettized" and not kwargs["create_pr"]
    assert kwargs["repo_type"] == "model"
    assert kwargs["commit_message"] == MESSAGE
    description = kwargs["commit_description"]
    assert "silero-vad 6.2.3" in description and "numpy 2.2.6" in description
    assert "encoder, unified-36ms" in description and "mil-fp16" in description
    assert result.commit_url == f"{ENDPOINT}/{REPO}/commit/{'a' * 40}" and result.pr_url is None


def test_create_pr_opens_a_pull_request_without_a_branch(release, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    api = RecordingApi()
    result = publish(release, REPO, create_pr=True, api=api)
    assert api.names() == ["create_repo", "validate_yaml", "create_commit"]
    assert api.calls[0][2]["private"] is None  # not --private: the Hub's (or the organization's) default
    _, _, operations, kwargs = api.calls[-1]
    check_operations(release, operations)
    assert kwargs["create_pr"] is True and kwargs["revision"] is None
    assert result.pr_url == f"{ENDPOINT}/{REPO}/discussions/7"


def test_upload_through_the_xet_pipeline(release, monkeypatch):
    """With hf_xet installed (huggingface_hub's default), upload_folder streams through its pipeline instead of
    create_commit. Its two Hub calls are replaced: the preupload query (all files answered "regular", so nothing
    goes to xet storage) and the commit POST."""
    pytest.importorskip("hf_xet")
    pipeline = pytest.importorskip("huggingface_hub._upload_pipeline")
    if not all(hasattr(pipeline, name) for name in ("_fetch_upload_modes", "_send_commit", "pipelined_upload")):
        pytest.skip("this huggingface_hub's upload pipeline has another layout")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    sent = []

    def fetch_upload_modes(additions, **kwargs):
        for op in additions:
            op._upload_mode, op._should_ignore, op._remote_oid = "regular", False, None

    def send_commit(*, operations, commit_message, commit_description, revision, repo_id, **kwargs):
        sent.append((list(operations), commit_message, commit_description, revision, repo_id))
        return CommitInfo(commit_url=f"{ENDPOINT}/{repo_id}/commit/{'b' * 40}", commit_message=commit_message,
                          commit_description=commit_description, oid="b" * 40)

    monkeypatch.setattr(pipeline, "_fetch_upload_modes", fetch_upload_modes)
    monkeypatch.setattr(pipeline, "_send_commit", send_commit)
    api = RecordingApi()
    result = publish(release, REPO, revision="dev", api=api)

    assert api.names() == ["create_repo", "create_branch", "validate_yaml"]  # no create_commit on this path
    assert len(sent) == 1
    operations, message, _, revision, repo = sent[0]
    check_operations(release, operations)
    assert (message, revision, repo) == (MESSAGE, "dev", REPO)
    assert result.commit_url == f"{ENDPOINT}/{REPO}/commit/{'b' * 40}"


def test_a_file_added_after_verification_is_not_sent(release, monkeypatch):
    """allow_patterns names the verified files: a file appearing between verification and upload stays home."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    api = RecordingApi()
    real_upload = api.upload_folder

    def late_file_then_upload(**kwargs):
        (release / "encoder" / "late[1].bin").write_bytes(b"not evidence")
        return real_upload(**kwargs)

    api.upload_folder = late_file_then_upload
    publish(release, REPO, api=api)
    check_operations(release, api.calls[-1][2])


def test_hub_failure_is_an_upload_error(release):
    class Failing(RecordingApi):
        def create_repo(self, repo_id, **kwargs):
            raise OSError("connection reset by peer")

    with pytest.raises(pub.PublishError, match=f"creating \\(or finding\\) the model repository {REPO} failed: "
                                               "OSError: connection reset by peer"):
        publish(release, REPO, api=Failing())


# ---- the dry run -------------------------------------------------------------------------------------------------
def test_dry_run_lists_every_file_and_makes_no_call(release, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("dry run touched the Hub")

    monkeypatch.setattr(pub, "HfApi", no_hub)
    monkeypatch.setattr(pub, "get_token", no_hub)
    result = publish(release, REPO, dry_run=True)
    assert result.commit_url is None
    sizes = {path: (release / path).stat().st_size for path in release_files(release)}
    assert dict(result.files) == sizes
    lines = result.lines()
    for path, size in sizes.items():
        assert any(line.split() == [f"{size:,}", path] for line in lines), path
    assert f"  {len(sizes)} files, {sum(sizes.values()):,} bytes" in "\n".join(lines)
    assert f"commit message: {MESSAGE}" in lines
    assert lines[-1] == "nothing was uploaded (--dry-run)"
    publish(release, REPO, dry_run=True, api=NoNetwork())


def test_plan_upload_is_the_release(release):
    operations = plan_upload(release)
    check_operations(release, operations)


# ---- refusals ----------------------------------------------------------------------------------------------------
def test_no_release_json_refuses(tmp_path):
    root = make_release(tmp_path / "rel")
    (root / "release.json").unlink()
    with pytest.raises(PublishRefused) as info:
        verify_release(root)
    assert str(info.value) == f"{root} is not a release directory written by coreml-parity export (no release.json)"


def test_tampered_file_refuses_naming_it(release):
    weights = release / "encoder" / package_name("encoder", "palettize-8bit") / "Data" / "com.apple.CoreML" / \
        "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01  # one flipped bit, same size
    weights.write_bytes(bytes(data))
    rel = weights.relative_to(release).as_posix()
    with pytest.raises(PublishRefused, match=r"changed since export \(sha256 differs\) \(1\): " + rel.replace(".", r"\.")):
        publish(release, REPO, dry_run=True)


def test_added_file_refuses_naming_it(release):
    (release / "unified-36ms" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(PublishRefused, match=r"not listed in release\.json \(1\): unified-36ms/\.DS_Store"):
        publish(release, REPO, dry_run=True)


@pytest.mark.parametrize("rel", [
    "encoder/metadata.json",
    f"unified-36ms/{package_name('unified-36ms', 'palettize-8bit')}/Data/com.apple.CoreML/weights/weight.bin",
])
def test_removed_file_refuses_naming_it(release, rel):
    (release / rel).unlink()
    with pytest.raises(PublishRefused) as info:
        verify_release(release)
    assert f"  missing (1): {rel}\n" in str(info.value)


def test_many_differences_are_listed_up_to_a_limit(release):
    for i in range(13):
        (release / "encoder" / f"extra-{i:02d}.txt").write_text(str(i))
    with pytest.raises(PublishRefused) as info:
        verify_release(release)
    message = str(info.value)
    assert "not listed in release.json (13): encoder/extra-00.txt" in message
    assert "encoder/extra-09.txt, and 3 more" in message and "extra-10" not in message


def test_failed_check_refuses_naming_component_variant_and_failure(release):
    rel = "unified-36ms/metadata.json"
    meta = json.loads((release / rel).read_text())
    meta["checks"][0].update(passed=False, failure="probability: max abs error 0.0061 > 0.004 at call 57")
    meta["passed"] = False
    rewrite_evidence(release, rel, meta)
    with pytest.raises(PublishRefused) as info:
        publish(release, REPO, dry_run=True)
    assert "component unified-36ms: clip check on mil-fp16 failed: probability: max abs error 0.0061 > 0.004 " \
           "at call 57" in str(info.value)
    assert "encoder" not in str(info.value)


def test_component_verdict_false_refuses(release):
    rel = "encoder/metadata.json"
    meta = json.loads((release / rel).read_text())
    meta["passed"] = False
    rewrite_evidence(release, rel, meta)
    with pytest.raises(PublishRefused, match=r"component encoder: encoder/metadata\.json says passed: false"):
        verify_release(release)


def test_release_verdict_false_refuses_naming_what_export_left_out(release):
    data = manifest(release)
    data["passed"] = False
    data["failed_components"] = {"stft": "mil-fp16: magnitude max abs error 0.02 > 0.01"}
    (release / "release.json").write_text(json.dumps(data))
    (release / "README.md").unlink()  # the verdict is reported first, whatever else is wrong
    with pytest.raises(PublishRefused) as info:
        verify_release(release)
    assert str(info.value) == (f"refusing to publish {release}: release.json says passed: false; components left out "
                               "by export:\n  stft: mil-fp16: magnitude max abs error 0.02 > 0.01")


def test_malformed_release_json_names_the_key(release):
    data = manifest(release)
    del data["source"]["name"]
    (release / "release.json").write_text(json.dumps(data))
    with pytest.raises(PublishRefused, match=r"release\.json: key 'source\.name' is missing"):
        verify_release(release)


def test_card_may_be_edited_but_must_parse(release):
    card = release / "README.md"
    card.write_text(card.read_text() + "\n## Notes\n\nHand-written notes.\n")
    assert verify_release(release).paths  # the card is not evidence: hand edits are fine
    card.write_text("---\nlicense: [mit\n---\n# broken\n")
    with pytest.raises(PublishRefused, match="README.md: its YAML header does not parse"):
        verify_release(release)


@pytest.mark.parametrize("repo, revision, create_pr, match", [
    ("silero-vad-coreml", None, False, "expected ORG/NAME"),
    ("org/name/extra", None, False, "expected ORG/NAME"),
    (REPO, "dev", True, "--create-pr opens a pull request against the default branch"),
])
def test_bad_requests_refuse_before_anything(release, repo, revision, create_pr, match):
    with pytest.raises(PublishRefused, match=match):
        publish(release, repo, revision=revision, create_pr=create_pr, api=NoNetwork())


# ---- the command line ----------------------------------------------------------------------------------------------
def parse(argv: list[str]) -> argparse.Namespace:
    """As conversions/__main__.py registers it: ``add_parser(sub)`` on the coreml-parity parser."""
    parser = argparse.ArgumentParser(prog="coreml-parity")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_dry_run_prints_the_plan(release, capsys, monkeypatch):
    monkeypatch.setattr(pub, "HfApi", NoNetwork)
    args = parse(["publish", str(release), "--repo", REPO, "--dry-run"])
    assert args.func is run
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for path in release_files(release):
        assert f"  {path}\n" in out
    assert f"{constants.ENDPOINT}/{REPO} on the default branch" in out
    assert MESSAGE in out


def test_cli_refusal_exits_2(tmp_path, capsys):
    args = parse(["publish", str(tmp_path), "--repo", REPO, "--dry-run"])
    assert run(args) == 2
    assert "not a release directory written by coreml-parity export (no release.json)" in capsys.readouterr().err


def test_cli_without_a_token_refuses(release, capsys, monkeypatch):
    monkeypatch.setattr(pub, "get_token", lambda: None)
    monkeypatch.setattr(pub, "HfApi", NoNetwork)
    assert run(parse(["publish", str(release), "--repo", REPO])) == 2
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err


def test_cli_upload_error_exits_1(release, capsys):
    class Failing(RecordingApi):
        def create_branch(self, repo_id, **kwargs):
            raise RuntimeError("403 Forbidden: no write access")

    args = parse(["publish", str(release), "--repo", REPO, "--revision", "dev", "--private"])
    assert run(args, api=Failing()) == 1
    assert f"creating branch dev of {REPO} failed: RuntimeError: 403 Forbidden" in capsys.readouterr().err


def test_cli_upload_prints_the_commit(release, capsys, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    api = RecordingApi()
    assert run(parse(["publish", str(release), "--repo", REPO, "--create-pr"]), api=api) == 0
    out = capsys.readouterr().out
    assert f"pull request: {ENDPOINT}/{REPO}/discussions/7" in out
    assert f"commit: {ENDPOINT}/{REPO}/commit/{'a' * 40}" in out
