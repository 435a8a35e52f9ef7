"""Searches of one name started at once never share a results folder (issue 19: both printed the same `Results:`
folder, and one's results table and checkpoints were the other's). Real threads racing on a real folder."""

from __future__ import annotations

import threading

from nbtl.search.runner import _experiment_dir


def test_each_search_claims_a_folder_of_its_own(tmp_path):
    claimed, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        claimed.append(_experiment_dir(tmp_path, "same"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == 8 and "same" in claimed
    assert all((tmp_path / name).is_dir() for name in claimed)
    assert all(name == "same" or name.startswith("same_") for name in claimed)
    assert _experiment_dir(tmp_path, "other") == "other"  # a free name is used as it is
