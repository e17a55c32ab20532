"""``coreml-parity publish DIR --repo ORG/NAME``: upload a release directory to the Hugging Face Hub, only if it is
exactly what ``coreml-parity export`` validated.

A release directory (``release.json``, ``README.md``, ``<component>/<package>.mlpackage``, ``<component>/
metadata.json``) is evidence: each package passed its parity checks, and ``release.json`` records the sha256 of
every file. Publishing is where that evidence would quietly stop being true — a package re-exported by hand, a
stray ``.DS_Store``, a failed check in a directory someone still wants to ship. So :func:`verify_release` runs
first, always (also for ``--dry-run``), and :class:`PublishRefused` says why it will not publish:

- no ``release.json`` (not a release, or an export that did not finish: export writes it last);
- ``release.json`` or a ``metadata.json`` malformed (the file and key are named);
- a failed check, or a verdict that is not ``passed`` (the component, the variant and the failure are named);
- files that differ from the manifest: changed bytes, missing files, files it does not list (``README.md``, the
  card, may be edited by hand and is not in the manifest; its YAML header must still parse).

The upload is one :meth:`huggingface_hub.HfApi.upload_folder` call (after ``create_repo(exist_ok=True)`` and, for a
new ``--revision`` branch, ``create_branch(exist_ok=True)``) with ``allow_patterns`` naming exactly the verified
files, so a file that appears between verification and upload is not sent either. :func:`plan_upload` returns the
same files as ``CommitOperationAdd`` operations (what the dry run lists). ``api`` is injectable: the tests pass an
``HfApi`` whose network calls are recorded, keeping ``upload_folder``'s own file selection and commit building real.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants, get_token
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .files import sha256_file
from .model_card import (
    CARD_FILE,
    METADATA_FILE,
    RELEASE_FILE,
    Component,
    Release,
    ReleaseFormatError,
    read_components,
    read_release,
)

LIST_LIMIT = 10  # paths shown per kind of difference; the rest is counted
REPO_TYPE = "model"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class PublishRefused(ValueError):
    """The release directory is not what export validated (or the request is unusable): nothing was uploaded.
    The command line prints it and exits 2."""


class PublishError(RuntimeError):
    """The Hub call failed (network, authentication, permissions). The command line prints it and exits 1."""


@dataclass(frozen=True)
class VerifiedRelease:
    """A release directory that passed :func:`verify_release`; ``paths`` are the files to upload (relative POSIX
    paths, in upload_folder's order: the manifest's files, ``release.json`` and ``README.md``)."""

    directory: Path
    release: Release
    components: dict[str, Component]
    paths: tuple[str, ...]

    @property
    def checks(self) -> int:
        return sum(len(c.checks) for c in self.components.values())


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    revision: str | None
    create_pr: bool
    private: bool
    dry_run: bool
    verified: VerifiedRelease
    files: tuple[tuple[str, int], ...]  # (path in repo, bytes)
    commit_message: str
    commit_description: str
    commit_url: str | None = None
    pr_url: str | None = None

    def lines(self) -> list[str]:
        """What the command prints: the verification, then the upload (done, or what a dry run would send)."""
        v = self.verified
        total = sum(size for _, size in self.files)
        target = f"{constants.ENDPOINT}/{self.repo_id}"
        where = ("as a pull request against the default branch" if self.create_pr else
                 f"on branch {self.revision} (created if missing)" if self.revision else "on the default branch")
        lines = [f"verified {v.directory}: {len(v.release.files or {})} files match {RELEASE_FILE}; "
                 f"{len(v.components)} components, all {v.checks} checks passed"]
        if self.dry_run:
            lines.append(f"dry run: would upload {len(self.files)} files ({_size(total)}) to {target} {where}"
                         + (" (private if the repository is new)" if self.private else ""))
            width = max(len(f"{size:,}") for _, size in self.files)
            lines += [f"  {size:>{width},}  {path}" for path, size in self.files]
            lines += [f"  {'':>{width}}  {len(self.files)} files, {total:,} bytes",
                      f"commit message: {self.commit_message}", "commit description:",
                      *(f"  {line}" for line in self.commit_description.splitlines()),
                      "nothing was uploaded (--dry-run)"]
            return lines
        lines.append(f"uploaded {len(self.files)} files ({_size(total)}) to {target} {where}")
        if self.pr_url:
            lines.append(f"pull request: {self.pr_url}")
        if self.commit_url:
            lines.append(f"commit: {self.commit_url}")
        return lines


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _listing(kind: str, paths: list[str]) -> str:
    shown = ", ".join(paths[:LIST_LIMIT])
    more = f", and {len(paths) - LIST_LIMIT} more" if len(paths) > LIST_LIMIT else ""
    return f"  {kind} ({len(paths)}): {shown}{more}"


def _upload_order(paths) -> list[str]:
    """upload_folder's order: sorted as paths (by parts), which is not plain string order ("a-b" vs "a/b")."""
    return sorted(paths, key=lambda p: p.split("/"))


def uploadable_files(release_dir: str | os.PathLike) -> list[str]:
    """Every file ``upload_folder`` would send from ``release_dir`` without patterns: each regular file (hidden ones
    too) except those its default ignore patterns skip (``.git/``, ``.cache/huggingface/``), as POSIX paths."""
    root = Path(release_dir)
    found = [p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file()]
    return _upload_order(filter_repo_objects(found, ignore_patterns=DEFAULT_IGNORE_PATTERNS))


def _check_manifest_paths(files: dict[str, str]) -> None:
    bad = []
    for path, digest in sorted(files.items()):
        parts = path.split("/")
        if (not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts)
                or path in (RELEASE_FILE, CARD_FILE)):
            bad.append(f"{path!r} is not a relative path of a release file")
        elif not _DIGEST.fullmatch(digest):
            bad.append(f"{path!r}: {digest!r} is not a sha256 hex digest")
    if bad:
        raise PublishRefused(f"{RELEASE_FILE}: key 'files' is malformed:\n" + "\n".join(f"  {b}" for b in bad))


def _check_card(root: Path) -> None:
    path = root / CARD_FILE
    if not path.is_file():
        raise PublishRefused(f"{root}: no {CARD_FILE} (the model card); re-run export, or write it with "
                             f"conversions.model_card.write_card({str(root)!r})")
    try:
        card = ModelCard(path.read_text(encoding="utf-8"))
    except Exception as exc:  # yaml's errors, a header that is not a mapping, a bad encoding
        raise PublishRefused(f"{path}: its YAML header does not parse ({exc}); fix the hand edit or re-render the "
                             "card with conversions.model_card.write_card") from exc
    if not card.data.to_dict().get("license"):
        raise PublishRefused(f"{path}: its YAML header has no license; re-render the card with "
                             "conversions.model_card.write_card")


def _check_files(root: Path, release: Release) -> list[str]:
    """Compare the directory with the manifest; return the upload list or refuse naming every difference."""
    listed = release.files or {}
    on_disk = {p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file()}
    uploadable = set(uploadable_files(root))
    missing = sorted(p for p in listed if p not in on_disk)
    ignored = sorted(p for p in listed if p in on_disk and p not in uploadable)
    changed = sorted(p for p in listed if p in uploadable and sha256_file(root / p) != listed[p])
    unexpected = sorted(uploadable - set(listed) - {RELEASE_FILE, CARD_FILE})
    problems = [_listing(kind, paths) for kind, paths in (
        ("changed since export (sha256 differs)", changed), ("missing", missing),
        ("not listed in release.json", unexpected),
        ("listed but never uploaded (upload_folder ignores .git/ and .cache/huggingface/)", ignored)) if paths]
    if problems:
        raise PublishRefused(
            f"refusing to publish {root}: its files are not the ones export validated ({RELEASE_FILE} records the "
            "sha256 of each)\n" + "\n".join(problems)
            + "\nre-run coreml-parity export, or remove the files it did not write")
    return _upload_order([*listed, RELEASE_FILE, CARD_FILE])


def _check_release_verdict(root: Path, release: Release) -> None:
    """First, and whatever else is wrong: an export that says it failed is never published."""
    if not release.passed:
        left_out = "".join(f"\n  {name}: {why or 'no reason recorded'}"
                           for name, why in sorted(release.failed_components.items()))
        raise PublishRefused(f"refusing to publish {root}: {RELEASE_FILE} says passed: false"
                             + (f"; components left out by export:{left_out}" if left_out else ""))


def _check_verdicts(root: Path, components: dict[str, Component]) -> None:
    problems = []
    for name, c in components.items():
        failed = [k for k in c.checks if not k.passed]
        for k in failed:
            problems.append(f"component {name}: {k.kind} check on {k.variant}"
                            + (f" ({k.compute_units})" if k.compute_units else "")
                            + f" failed: {k.failure or 'no failure message recorded'}")
        if not c.checks:
            problems.append(f"component {name}: {c.file} records no checks, so nothing shows it matches torch")
        elif not c.passed and not failed:
            problems.append(f"component {name}: {c.file} says passed: false")
    if problems:
        raise PublishRefused(f"refusing to publish {root}: not every check passed\n"
                             + "\n".join(f"  {p}" for p in problems[:LIST_LIMIT])
                             + (f"\n  and {len(problems) - LIST_LIMIT} more" if len(problems) > LIST_LIMIT else ""))


def verify_release(release_dir: str | os.PathLike) -> VerifiedRelease:
    """Check that ``release_dir`` is a complete export whose every check passed and whose files are exactly those
    ``release.json`` lists, with the same sha256; raise :class:`PublishRefused` saying what is not."""
    root = Path(release_dir)
    if not root.is_dir():
        raise PublishRefused(f"{root}: no such directory")
    if not (root / RELEASE_FILE).is_file():
        raise PublishRefused(f"{root} is not a release directory written by coreml-parity export (no {RELEASE_FILE})")
    try:
        release = read_release(root)
    except ReleaseFormatError as exc:
        raise PublishRefused(f"{root}: {exc}") from exc
    _check_release_verdict(root, release)
    if release.files is None:
        raise PublishRefused(f"{root}: {RELEASE_FILE} has no 'files' (the sha256 of every file); re-run export")
    _check_manifest_paths(release.files)
    _check_card(root)
    paths = _check_files(root, release)
    try:  # after the digests: a metadata.json that was edited is reported as changed, not as malformed
        components = read_components(root, release)
    except ReleaseFormatError as exc:
        raise PublishRefused(f"{root}: {exc}") from exc
    if not components:
        raise PublishRefused(f"{root}: {RELEASE_FILE} lists no components")
    for name, c in components.items():  # what the card describes must be part of the evidence
        if c.file not in release.files:
            raise PublishRefused(f"{root}: {RELEASE_FILE} does not list {c.file}")
        package = f"{name}/{c.package}"
        if not any(p == package or p.startswith(package + "/") for p in release.files):
            raise PublishRefused(f"{root}: component {name}: its package {package} (named by {c.file}) has no file "
                                 f"in {RELEASE_FILE}")
    _check_verdicts(root, components)
    return VerifiedRelease(root.resolve(), release, components, tuple(paths))


def plan_upload(release: str | os.PathLike | VerifiedRelease) -> list[CommitOperationAdd]:
    """The files the upload sends, as ``CommitOperationAdd`` operations (path in repo = path in the directory),
    after :func:`verify_release` (unless given a :class:`VerifiedRelease`)."""
    verified = release if isinstance(release, VerifiedRelease) else verify_release(release)
    return [CommitOperationAdd(path_in_repo=p, path_or_fileobj=verified.directory / p) for p in verified.paths]


def allow_patterns(paths) -> list[str]:
    """One pattern per file, matching only that file: upload_folder matches patterns with ``fnmatch``, so ``[``,
    ``*`` and ``?`` in a name are escaped."""
    return [glob.escape(p) for p in paths]


def _short_version(version: str | None) -> str | None:
    return version.split("+", 1)[0] if version else version


def commit_message(release: Release, components: int) -> str:
    """The commit title: family, source model, compression, component count and the converting tools."""
    what = release.strategy or (f"mixed recipe {release.recipe}" if release.recipe else release.precision)
    versions = [f"{tool} {_short_version(release.tool_versions.get(tool))}" for tool in ("coremltools", "torch")
                if release.tool_versions.get(tool)]
    return (f"coreml-parity export of {release.family} ({release.source.name}) {what}: {components} component"
            f"{'s' if components != 1 else ''}" + "".join(f", {v}" for v in versions))


def commit_description(verified: VerifiedRelease) -> str:
    r = verified.release
    src = r.source
    compression = r.strategy or "none"
    if r.strategy_description:
        compression += f" ({r.strategy_description})"
    if r.recipe:
        compression += f"; mixed-precision recipe {r.recipe}"
    tools = ", ".join(f"{k} {v}" for k, v in sorted(r.tool_versions.items()) if v)
    platform = " ".join(r.platform[k] for k in ("system", "machine") if r.platform.get(k))
    if r.platform.get("python"):
        platform += f", Python {r.platform['python']}"
    lines = [f"Source: {src.name}" + (f" ({src.url})" if src.url else "") + (f", {src.weights}" if src.weights else "")
             + f"; license {src.license}",
             f"Precision {r.precision}, compression {compression}, deployment target {r.deployment_target}",
             f"Components: {', '.join(r.components)}",
             f"Checks: all {verified.checks} passed on {', '.join(r.backends)}; figures in README.md and each "
             f"<component>/{METADATA_FILE}",
             f"Tools: {tools}",
             f"Clip: {r.clip.path} (sha256 {r.clip.sha256})",
             f"Exported {r.created_at}" + (f" from commit {r.git_commit}" if r.git_commit else "")
             + (f" on {platform}" if platform else ""),
             f"{RELEASE_FILE} lists the sha256 of every file; coreml-parity publish verified them before this upload."]
    return "\n".join(lines)


def _check_request(repo_id: str, revision: str | None, create_pr: bool) -> None:
    if not _REPO_ID.fullmatch(repo_id or "") or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise PublishRefused(f"--repo {repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.')")
    if revision is not None and not revision.strip():
        raise PublishRefused("--revision: empty branch name")
    if create_pr and revision not in (None, constants.DEFAULT_REVISION):
        raise PublishRefused(f"--create-pr opens a pull request against the default branch; it cannot target "
                             f"--revision {revision} (upload to the branch without --create-pr, or drop --revision)")


def publish(release_dir: str | os.PathLike, repo_id: str, *, revision: str | None = None, create_pr: bool = False,
            dry_run: bool = False, private: bool = False, api: Any = None, token: str | None = None) -> PublishResult:
    """Verify ``release_dir`` and upload it to the model repository ``repo_id`` in one ``upload_folder`` call.

    ``revision``: a branch, created from the default branch if missing (not with ``create_pr``, whose pull
    request always targets the default branch). ``private`` applies when the repository is created; an existing
    repository keeps its visibility. ``dry_run`` verifies and returns the plan without any network call. ``api`` is
    an ``HfApi``-like object (default: ``HfApi(token=token)``; without a token huggingface_hub uses ``HF_TOKEN`` or
    the one saved by ``hf auth login``).

    Raises :class:`PublishRefused` (nothing uploaded: a refused release, a bad request, no token) or
    :class:`PublishError` (a Hub call failed)."""
    _check_request(repo_id, revision, create_pr)
    verified = verify_release(release_dir)
    operations = plan_upload(verified)
    result = PublishResult(repo_id=repo_id, revision=revision, create_pr=create_pr, private=private, dry_run=dry_run,
                           verified=verified,
                           files=tuple((op.path_in_repo, op.upload_info.size) for op in operations),
                           commit_message=commit_message(verified.release, len(verified.components)),
                           commit_description=commit_description(verified))
    if dry_run:
        return result
    if api is None:
        if token is None and get_token() is None:
            raise PublishRefused("no Hugging Face token: set HF_TOKEN, run `hf auth login` (older huggingface_hub: "
                                 "`huggingface-cli login`) or pass --token; a --dry-run needs none")
        api = HfApi(token=token)

    def hub(what: str, call, **kwargs):
        try:
            return call(**kwargs)
        except Exception as exc:  # any failure of the Hub call is an upload error, reported with what was tried
            raise PublishError(f"{what} failed: {type(exc).__name__}: {exc}") from exc

    hub(f"creating (or finding) the model repository {repo_id}", api.create_repo, repo_id=repo_id,
        repo_type=REPO_TYPE, exist_ok=True, private=True if private else None)
    if revision and revision != constants.DEFAULT_REVISION and not create_pr:
        hub(f"creating branch {revision} of {repo_id}", api.create_branch, repo_id=repo_id, branch=revision,
            repo_type=REPO_TYPE, exist_ok=True)
    info = hub(f"uploading {verified.directory} to {repo_id}", api.upload_folder, repo_id=repo_id,
               folder_path=verified.directory, repo_type=REPO_TYPE, revision=revision, create_pr=create_pr,
               commit_message=result.commit_message, commit_description=result.commit_description,
               allow_patterns=allow_patterns(verified.paths))
    return dataclasses.replace(result, commit_url=getattr(info, "commit_url", None) or str(info),
                               pr_url=getattr(info, "pr_url", None))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``publish`` on the ``coreml-parity`` command line (``subparsers`` from ``add_subparsers``)."""
    p = subparsers.add_parser(
        "publish", help="verify a release directory written by export and upload it to the Hugging Face Hub",
        description="Verify a release directory written by `coreml-parity export` (every check passed, every file "
                    "matches the sha256 in release.json, nothing else present), then upload it to a Hugging Face "
                    "model repository in one commit. Exit 2: refused (nothing uploaded); 1: the upload failed.")
    p.add_argument("release_dir", metavar="DIR", help="the release directory (export --out DIR)")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="the model repository (created if missing)")
    p.add_argument("--revision", metavar="BRANCH", help="upload to this branch, created from the default branch if "
                                                        "missing (default: the default branch)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request against the default branch instead "
                                                            "of committing to it")
    p.add_argument("--dry-run", action="store_true", help="verify and list what would be uploaded; no network call")
    p.add_argument("--private", action="store_true", help="create the repository private (an existing repository "
                                                          "keeps its visibility)")
    p.add_argument("--token", help="Hugging Face token (default: HF_TOKEN, or the token saved by `hf auth login`); "
                                   "prefer HF_TOKEN: a command-line token is visible to other users of the machine")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, *, api: Any = None) -> int:
    """The ``publish`` command: 0 published (or dry run), 2 refused, 1 upload failed."""
    try:
        result = publish(args.release_dir, args.repo, revision=args.revision, create_pr=args.create_pr,
                         dry_run=args.dry_run, private=args.private, api=api, token=args.token)
    except PublishRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(result.lines()))
    return 0
