"""Optuna's own storage conformance suite, against JournalStorage on the git journal.

``optuna.testing.pytest_storages.StorageTestCase`` is the contract Optuna holds its
storages to; passing it means a study on a git remote behaves as Optuna's users expect,
pickling included (process pools, joblib and Dask send the storage to other processes).
The remote is a bare repository given as a path (written directly) and, in the slow
tier, as a ``file://`` URL (git push and fetch).
"""

from __future__ import annotations

import pickle
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.storages import JournalStorage  # noqa: E402
from optuna.testing.pytest_storages import StorageTestCase  # noqa: E402

from distribute.optuna import GitJournalBackend  # noqa: E402


def bare(tmp_path: Path) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)],
                   check=True)
    return path


class TestGitJournalStorage(StorageTestCase):
    @pytest.fixture(params=["path", pytest.param("file-url", marks=pytest.mark.slow)])
    def storage(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JournalStorage]:
        path = bare(tmp_path)
        url = str(path) if request.param == "path" else path.as_uri()
        backend = GitJournalBackend.open(url, "conformance", refresh_seconds=0)
        try:
            yield JournalStorage(backend)
        finally:
            backend.close()


def test_a_pickled_storage_sees_the_same_study(tmp_path: Path) -> None:
    path = bare(tmp_path)
    with GitJournalBackend.open(str(path), "s", refresh_seconds=0) as backend:
        storage = JournalStorage(backend)
        study = optuna.create_study(storage=storage, study_name="s")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        copy = pickle.loads(pickle.dumps(storage))
        again = optuna.load_study(study_name="s", storage=copy)
        assert [t.params for t in again.trials] == [t.params for t in study.trials]
        state = pickle.dumps(storage)
        assert len(state) < 2000  # the URL, the name and the options, not the journal's cache
