"""A repository's persistent ``cat-file`` processes that died are started again, once.

Objects a worker reads and the paths it looks up in trees (a view's folders) go
through two long-lived ``git cat-file`` processes.  One killed under it (the machine's
out-of-memory killer, say) must cost a restart, not a failed step.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from distribute.transport.repository import _Repository


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@invalid", *args],
                          cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


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
    git("init", "-q", str(tmp_path), cwd=tmp_path)
    (tmp_path / "a.txt").write_text("a\n")
    git("add", "-A", cwd=tmp_path)
    git("commit", "-qm", "one", cwd=tmp_path)
    tree = git("rev-parse", "HEAD^{tree}", cwd=tmp_path)
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
