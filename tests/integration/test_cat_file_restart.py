"""A repository's persistent ``cat-file`` processes that died are started again, once.

Objects a worker reads and the paths it looks up in trees (a view's folders) go
through two long-lived ``git cat-file`` processes.  One killed under it (the machine's
out-of-memory killer, say) must cost a restart, not a failed step.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from distribute.transport.repository import _Entry, _Repository


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@invalid", *args],
                          cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def one_file_repository(path: Path) -> str:
    """A repository at ``path`` whose one commit holds ``a.txt``; its tree's id."""
    git("init", "-q", str(path), cwd=path)
    (path / "a.txt").write_text("a\n")
    git("add", "-A", cwd=path)
    git("commit", "-qm", "one", cwd=path)
    return git("rev-parse", "HEAD^{tree}", cwd=path)


def test_reads_and_lookups_survive_a_killed_cat_file(tmp_path):
    git("init", "-q", str(tmp_path), cwd=tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "file.txt").write_text("text\n")
    git("add", "-A", cwd=tmp_path)
    git("commit", "-qm", "one", cwd=tmp_path)
    commit, tree = git("rev-parse", "HEAD", cwd=tmp_path), git("rev-parse", "HEAD^{tree}",
                                                               cwd=tmp_path)
    folder = git("rev-parse", "HEAD:folder", cwd=tmp_path)
    repo = _Repository(tmp_path, timeout=30)
    repo.sha1 = False  # every read through cat-file, none from the loose files here
    try:
        assert repo.read_object(commit)[0] == "commit"
        assert repo.lookup(tree, "folder") == ("tree", folder)
        for process in (repo._repo.git.cat_file_all, repo._repo.git.cat_file_header):
            process.proc.kill()
            process.proc.wait()
        assert repo.read_object(commit)[0] == "commit"
        assert repo.lookup(tree, "folder") == ("tree", folder)
        assert repo.lookup(tree, "missing") is None
    finally:
        repo.close()


def test_a_small_tree_is_parsed_once_and_each_caller_gets_its_own_entries(tmp_path):
    tree = one_file_repository(tmp_path)
    repo = _Repository(tmp_path, timeout=30)
    try:
        first = repo.tree_entries(tree)
        assert list(first) == [b"a.txt"]
        first[b"b.txt"] = first.pop(b"a.txt")  # a caller editing what it got
        reads = []
        read = repo.read_object
        repo.read_object = lambda oid: reads.append(oid) or read(oid)  # type: ignore[method-assign]
        assert list(repo.tree_entries(tree)) == [b"a.txt"]
        assert reads == []  # kept parsed: a tree never changes
    finally:
        repo.close()


def test_a_large_folder_is_looked_up_here_once_git_has_been_asked_about_it_once(tmp_path):
    """A worker looks up its job's folder in the tree of every job's results, 100,000
    entries on a long sweep, which git scans whole each time.  A tree asked about again
    is read and kept cut into entries, and a tree spliced from it here is answered from
    the splice: every answer must be git's own."""
    git("init", "-q", str(tmp_path), cwd=tmp_path)
    blob = git("hash-object", "-w", "--stdin", cwd=tmp_path)  # the empty file
    listing = "".join(f"100644 blob {blob}\tjob-{i:05d}\n" for i in range(0, 9000, 2))
    listing += f"040000 tree {git('mktree', cwd=tmp_path)}\tjob-00003\n"  # a folder too
    tree = subprocess.run(["git", "mktree"], cwd=tmp_path, input=listing, text=True,
                          capture_output=True, check=True).stdout.strip()
    repo = _Repository(tmp_path, timeout=30)
    asked: list[str] = []
    ask = repo._ask_cat_file
    repo._ask_cat_file = lambda how, name, oid: asked.append(name) or ask(how, name, oid)  # type: ignore[method-assign]
    names = ["job-00000", "job-00001", "job-00003", "job-08998", "job-09000", "a", "zzz"]

    def gits_answer(tree: str, name: str) -> tuple[str, str] | None:
        out = subprocess.run(["git", "cat-file", "--batch-check"], cwd=tmp_path,
                             input=f"{tree}:{name}\n", text=True, capture_output=True,
                             check=True).stdout.split()
        return None if out[-1] == "missing" else (out[1], out[0])

    try:
        assert repo.lookup(tree, "job-00000") == gits_answer(tree, "job-00000")
        assert len(asked) == 1  # the first time, git looks
        for name in names:
            assert repo.lookup(tree, name) == gits_answer(tree, name)
        asked.clear()
        for name in names:  # kept cut now: no more questions to git
            assert repo.lookup(tree, name) == gits_answer(tree, name)
        assert asked == []
        entry = _Entry(0o040000, git("mktree", cwd=tmp_path))
        spliced = repo.splice_tree(tree, {b"job-00001": entry, b"job-00002": None})
        assert spliced is not None
        for name in [*names, "job-00002"]:
            assert repo.lookup(spliced, name) == gits_answer(spliced, name)
        assert asked == []
    finally:
        repo.close()


def test_a_small_tree_asked_about_again_is_read_once_then_left_to_git(tmp_path):
    tree = one_file_repository(tmp_path)
    blob = git("rev-parse", "HEAD:a.txt", cwd=tmp_path)
    repo = _Repository(tmp_path, timeout=30)
    reads: list[str] = []
    read = repo.read_object
    repo.read_object = lambda oid: reads.append(oid) or read(oid)  # type: ignore[method-assign]
    try:
        for _ in range(4):
            assert repo.lookup(tree, "a.txt") == ("blob", blob)
            assert repo.lookup(tree, "b.txt") is None
        assert reads == [tree]  # read once to learn it is small, then git scans it
    finally:
        repo.close()
