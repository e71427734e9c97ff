"""A view of the remote (status, logs, results, add, requeue) reads through git's
object store alone: its scratch clone has no working tree, so a remote holding
thousands of jobs' result files costs the view no checkout."""

from __future__ import annotations

from pathlib import Path

from distribute.remote import init_remote, remote_view


def test_a_view_has_no_working_tree_and_reads_the_main_branch(bare_remote: Path) -> None:
    init_remote(str(bare_remote), jobs=["a", "b"])
    with remote_view(str(bare_remote)) as view:
        files = [p.name for p in view.copy.path.iterdir()]
        assert files == [".git"], f"a view checked out files: {files}"
        main = view.transport.fetch([view.main_ref])[view.main_ref]
        assert view.transport.read_file(main, "jobs.txt") == b"a\nb\n"
