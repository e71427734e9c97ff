"""Through git's pack protocol (a ``file://`` URL), the git transport reads fetched refs from
its local mirror's ref files itself: loose refs, packed refs, a loose ref newer than its
packed line, refs pruned away, and a reftable repository (where it asks git instead).
Remotes written directly are read the same way: tests/integration/test_direct_remote.py."""

from __future__ import annotations

from pathlib import Path

from distribute.transport.base import RefUpdate
from distribute.transport.local_copy import GitLocalCopy

MAIN = "refs/heads/main"


def test_fetched_values_agree_with_git_whether_refs_are_loose_or_packed(
        bare_remote: Path, tmp_path: Path, run_git) -> None:
    t = GitLocalCopy.clone(bare_remote.as_uri(), tmp_path / "copy").transport()
    main = t.fetch([MAIN])[MAIN]
    one = t.write_commit(parents=[main], message="one", base=main, changes={"a": b"1"})
    assert t.push([RefUpdate("refs/distribute/workers/a", None, one),
                   RefUpdate("refs/distribute/workers/b/c", None, one)])
    wanted = [MAIN, "refs/distribute/workers/*"]
    expected = {MAIN: main, "refs/distribute/workers/a": one, "refs/distribute/workers/b/c": one}
    assert t.fetch(wanted) == expected  # loose
    run_git("-C", tmp_path / "copy", "pack-refs", "--all", "--prune")
    assert t.fetch(wanted) == expected  # packed (the fetch rewrites nothing)
    two = t.write_commit(parents=[one], message="two", base=one, changes={"a": b"2"})
    assert t.push([RefUpdate("refs/distribute/workers/a", one, two),
                   RefUpdate("refs/distribute/workers/b/c", one, None)])
    # a loose ref newer than its packed line wins; a ref deleted on the remote is gone
    assert t.fetch(wanted) == {MAIN: main, "refs/distribute/workers/a": two}
    assert t.list_refs("refs/distribute/") == {"refs/distribute/workers/a": two}


def test_without_ref_files_git_is_asked(bare_remote: Path, tmp_path: Path, run_git) -> None:
    copy = GitLocalCopy.clone(bare_remote.as_uri(), tmp_path / "copy")
    t = copy.transport()
    main = t.fetch([MAIN])[MAIN]
    t._repo.ref_storage = "reftable"  # as a repository with extensions.refStorage=reftable
    calls = []
    real = t._repo.check

    def check(args, what, **kw):
        calls.append(args[0])
        return real(args, what, **kw)

    t._repo.check = check
    assert t.fetch([MAIN]) == {MAIN: main}
    assert "for-each-ref" in calls
