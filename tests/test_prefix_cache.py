"""Tests of the frozen-prefix cache (nbtl.features.PrefixStore) and cached trials in nbtl.train.train_trial,
with real torch, the packaged EfficientNet-Lite0 weights and scikit-learn's digits at 32 px."""

from __future__ import annotations

import collections
import functools
import logging
import pickle
from pathlib import Path

import pytest
import torch

from conftest import Recorder, mapped_kib
from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.features import PrefixStore
from nbtl.train import PROBE_MIN_STEPS, train_trial
from nbtl.transfer import build_transfer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LITE0 = "efficientnet_lite0"
CPU = torch.device("cpu")
# Blocks 7 and 8 and the head train; blocks [0, 7) come from the cache.
CONFIG = dict(backbone=LITE0, freeze_blocks=7, lr=0.02, epochs=2, batch_size=8, seed=3)
AUGMENTATION = {"hflip": True, "crop_padding": 4}
CHANCE = 0.1  # 10 classes


def _train(splits, weights, config=CONFIG, **kwargs):
    recorder = Recorder()
    result = train_trial(
        TrialConfig.from_dict(config), splits, state_dict=weights, report=recorder, device=CPU, **kwargs
    )
    return result, recorder


def _entries(directory):
    """The store's entry folders (each with its key file and arrays)."""
    return sorted(p for p in directory.iterdir() if (p / "key.json").exists())


def _without(history, *keys):
    return [{k: v for k, v in m.items() if k not in ("epoch_time_s", *keys)} for m in history]


@pytest.fixture(scope="module")
def uncached_run(splits, weights):
    return _train(splits, weights, cache_prefix=False)


def test_cached_trial_matches_uncached_and_learns(uncached_run, splits, weights):
    cached, _ = _train(splits, weights, cache_prefix=True)
    uncached, _ = uncached_run
    assert [m["prefix_blocks"] for m in cached.history] == [7, 7]
    assert [m["prefix_cache_hit"] for m in cached.history] == [0.0, 0.0]  # this trial computed the entry
    assert [(m["prefix_blocks"], m["prefix_cache_hit"]) for m in uncached.history] == [(0, 0.0), (0, 0.0)]
    for got, expected in zip(cached.history, uncached.history):
        for key, value in _without([expected], "prefix_blocks", "prefix_cache_hit")[0].items():
            assert got[key] == pytest.approx(value, abs=1e-3), key
    assert cached.final["best_val_accuracy"] > 2 * CHANCE and cached.final["test_accuracy"] > 2 * CHANCE


def test_disk_store_computes_an_entry_once_for_two_processes(splits, weights, tmp_path):
    # Two store objects on one directory stand for two worker processes of a search.
    first, _ = _train(splits, weights, prefix_store=PrefixStore(tmp_path))
    second, _ = _train(splits, weights, prefix_store=PrefixStore(tmp_path))
    assert [m["prefix_cache_hit"] for m in first.history] == [0.0, 0.0]
    assert [m["prefix_cache_hit"] for m in second.history] == [1.0, 1.0]
    assert len(_entries(tmp_path)) == 1
    assert list(tmp_path.glob(".*.tmp")) == []  # no staging folder left
    assert _without(first.history, "prefix_cache_hit") == _without(second.history, "prefix_cache_hit")


def test_store_keys_entries_by_prefix_and_remembers_them(splits, weights, tmp_path):
    store = PrefixStore(tmp_path)
    model = build_transfer(TrialConfig(freeze_blocks=8), 10, state_dict=weights).model
    entry = store.get(model, splits, 7, state_dict=weights)
    assert not entry.hit and entry.path.name.startswith(f"{LITE0}-b7-32px-v1-")
    again = store.get(model, splits, 7, state_dict=weights)
    assert again.hit and again.train is entry.train  # from this object's memory
    deeper = store.get(model, splits, 8, state_dict=weights)
    assert not deeper.hit and deeper.digest != entry.digest and len(_entries(tmp_path)) == 2
    # The store travels to Ray workers pickled, without its memory.
    clone = pickle.loads(pickle.dumps(store))
    assert clone.directory == store.directory and clone.get(model, splits, 7, state_dict=weights).hit
    with pytest.raises(ConfigError, match="prefix blocks must be an integer in 1..9, got 0"):
        store.get(model, splits, 0)


def test_augmented_entry_has_distinct_fixed_views(splits, weights):
    model = build_transfer(TrialConfig(freeze_blocks=3), 10, state_dict=weights).model
    entry = PrefixStore(views=3, seed=5).get(model, splits, 3, augmentation=AUGMENTATION, state_dict=weights)
    assert entry.views == 3 and entry.train.dtype == torch.float32
    assert entry.train.shape[:2] == (3, len(splits.train)) and entry.val.shape[0] == len(splits.val)
    clean = model.eval().forward_to(splits.train.images, 3)
    torch.testing.assert_close(entry.train[0], clean, rtol=1e-4, atol=1e-5)  # view 0 is the clean image
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not torch.allclose(entry.train[a], entry.train[b])
    same_seed = PrefixStore(views=3, seed=5).get(model, splits, 3, augmentation=AUGMENTATION, state_dict=weights)
    assert torch.equal(same_seed.train, entry.train)  # every trial of a search sees the same views
    without = PrefixStore(views=3).get(model, splits, 3, augmentation=None, state_dict=weights)
    assert without.views == 1


def test_fully_frozen_trial_trains_the_head_on_pooled_features(splits, weights):
    config = {**CONFIG, "freeze_blocks": 9, "epochs": 2, "batch_size": 16, "head": "mlp", "head_width": 16}
    result, recorder = _train(splits, weights, config)
    assert [m["prefix_blocks"] for m in result.history] == [9, 9]
    assert result.final["best_val_accuracy"] > 5 * CHANCE
    steps = recorder.states[-1]["scheduler"]["last_epoch"]
    assert steps >= PROBE_MIN_STEPS  # many passes over the pooled features, one cosine schedule
    # the linear probe is fitted (nbtl.fit.probe), not stepped: no optimizer step, as good a result
    result, recorder = _train(splits, weights, {**config, "head": "linear"})
    assert [m["prefix_blocks"] for m in result.history] == [9, 9]
    assert result.final["best_val_accuracy"] > 5 * CHANCE
    assert recorder.states[-1]["scheduler"]["last_epoch"] == 0


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "disk"])
def test_the_probe_takes_clean_views_only_and_the_augmented_entry_reuses_them(splits, weights, tmp_path, on_disk):
    store = PrefixStore(tmp_path / "store" if on_disk else None, views=3, seed=5)
    model = build_transfer(TrialConfig(freeze_blocks=9), 10, state_dict=weights).model
    get = functools.partial(store.get, model, splits, 9, augmentation=AUGMENTATION, state_dict=weights)
    clean = get(clean_only=True)
    assert clean.views == 1 and not clean.hit  # the probe's: no augmented view computed
    full = get()  # a trial that trains on the views: computes the augmented ones, copies the rest
    assert full.views == 3 and not full.hit
    fresh = PrefixStore(views=3, seed=5).get(model, splits, 9, augmentation=AUGMENTATION, state_dict=weights)
    for part in ("train", "val", "test"):  # the same as an entry computed from scratch, bit for bit
        assert torch.equal(getattr(full, part), getattr(fresh, part)), part
    assert torch.equal(full.train[0], clean.train[0])
    again = get(clean_only=True)  # with every view stored, the probe reads view 0 of that entry
    assert again.hit and again.views == 3
    if on_disk:
        assert [p.name.split("-")[3] for p in _entries(tmp_path / "store")] == ["v1", "v3"]
        # a new worker process (a store object without memory) finds the entry with every view on disk
        other = PrefixStore(tmp_path / "store", views=3, seed=5).get(
            model, splits, 9, augmentation=AUGMENTATION, state_dict=weights, clean_only=True
        )
        assert other.hit and other.views == 3 and torch.equal(other.train, fresh.train)


def test_a_probe_trial_fits_on_the_clean_view_and_scores_as_with_every_view(splits, weights, tmp_path):
    config = {**CONFIG, "freeze_blocks": 9, "epochs": 2, "batch_size": 16, "head": "linear"}
    alone, _ = _train(splits, weights, config, augmentation=AUGMENTATION, prefix_store=PrefixStore(tmp_path))
    assert [p.name.split("-")[3] for p in _entries(tmp_path)] == ["v1"]  # the clean view only
    warmed = PrefixStore()
    warmed.get(
        build_transfer(TrialConfig.from_dict(config), 10, state_dict=weights).model,
        splits,
        9,
        augmentation=AUGMENTATION,
        state_dict=weights,
    )
    shared, _ = _train(splits, weights, config, augmentation=AUGMENTATION, prefix_store=warmed)
    assert [m["prefix_cache_hit"] for m in shared.history] == [1.0, 1.0]  # read view 0 of the stored entry
    assert _without(alone.history, "prefix_cache_hit") == _without(shared.history, "prefix_cache_hit")


def test_entry_over_max_bytes_falls_back_to_uncached(uncached_run, splits, weights, caplog):
    uncached, _ = uncached_run
    with caplog.at_level(logging.WARNING, logger="nbtl.features.prefix"):
        result, _ = _train(splits, weights, prefix_store=PrefixStore(max_bytes=1024))
    assert "max_bytes" in caplog.text and "uncached" in caplog.text
    assert [m["prefix_blocks"] for m in result.history] == [0, 0]
    assert _without(result.history) == _without(uncached.history)


def test_an_entry_over_max_bytes_on_disk_is_mapped_and_serves_its_trials(uncached_run, splits, weights, tmp_path):
    # max_bytes bounds what a store holds in memory; an entry on disk is memory-mapped and read in batches, so one
    # larger than that (as one larger than the RAM would be) still serves: computed once, mapped by the next trial
    uncached, _ = uncached_run
    first, _ = _train(splits, weights, prefix_store=PrefixStore(tmp_path, max_bytes=1024))
    store = PrefixStore(tmp_path, max_bytes=1024)
    second, _ = _train(splits, weights, prefix_store=store)
    assert [m["prefix_cache_hit"] for m in second.history] == [1.0, 1.0]
    assert [m["prefix_blocks"] for m in first.history] == [7, 7]
    for got, expected in zip(second.history, uncached.history):
        assert got["val_accuracy"] == pytest.approx(expected["val_accuracy"], abs=1e-3)
    [folder] = _entries(tmp_path)
    entry = next(iter(store._memory.values()))
    assert entry.nbytes > 1024 and entry.path == folder
    # the mapping is copy-on-write: what a process writes into it never reaches the file
    before = (folder / "train.npy").read_bytes()
    entry.train.zero_()
    assert (folder / "train.npy").read_bytes() == before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_entries_round_trip_through_disk(splits, weights, tmp_path, dtype):
    model = build_transfer(TrialConfig(freeze_blocks=8), 10, state_dict=weights).model
    computed = PrefixStore(tmp_path, dtype=dtype).get(model, splits, 6, state_dict=weights)
    loaded = PrefixStore(tmp_path, dtype=dtype).get(model, splits, 6, state_dict=weights)
    assert loaded.hit and loaded.train.dtype == dtype and torch.equal(loaded.train, computed.train)
    exact = model.eval().forward_to(splits.val.images, 6)
    torch.testing.assert_close(loaded.val.float(), exact, rtol=2e-2, atol=2e-2)
    assert loaded.nbytes * 2 == PrefixStore(dtype=torch.float32).get(model, splits, 6, state_dict=weights).nbytes


def test_the_directory_evicts_the_entries_used_longest_ago_under_its_cap(splits, weights, tmp_path):
    import os

    model = build_transfer(TrialConfig(freeze_blocks=8), 10, state_dict=weights).model
    store = PrefixStore(tmp_path)
    folders = {k: store.get(model, splits, k, state_dict=weights).path for k in (5, 6, 7)}
    sizes = {k: sum(f.stat().st_size for f in folder.iterdir()) for k, folder in folders.items()}
    for age, k in enumerate((6, 5, 7)):  # 6 used longest ago, then 5, then 7
        os.utime(folders[k] / "key.json", (1_000_000 + age, 1_000_000 + age))
    capped = PrefixStore(tmp_path, max_disk_bytes=sizes[5] + sizes[7] + sizes[7] // 2)
    capped.evict()
    assert _entries(tmp_path) == sorted([folders[5], folders[7]])  # 6 went first, and that was enough
    # a new entry over the cap: the oldest go, never the one just written
    tight = PrefixStore(tmp_path, max_disk_bytes=1)
    newest = tight.get(model, splits, 8, state_dict=weights)
    assert _entries(tmp_path) == [newest.path]
    assert tight.get(model, splits, 8, state_dict=weights).hit


def test_resume_of_a_cached_trial_matches_an_uninterrupted_one(splits, weights, tmp_path):
    config = {**CONFIG, "epochs": 3, "head": "mlp", "head_width": 16, "head_dropout": 0.2}
    store = PrefixStore(tmp_path, views=3)
    full, recorder = _train(splits, weights, config, augmentation=AUGMENTATION, prefix_store=store)
    path = tmp_path / "checkpoint.pt"
    torch.save(recorder.states[0], path)  # through a file, as the Ray trainable does
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    resumed, resumed_recorder = _train(
        splits,
        weights,
        config,
        augmentation=AUGMENTATION,
        prefix_store=PrefixStore(tmp_path, views=3),
        resume=checkpoint,
    )
    assert [m["epoch"] for m in resumed_recorder.metrics] == [2, 3]
    assert [m["prefix_cache_hit"] for m in resumed.history] == [0.0, 1.0, 1.0]  # epoch 1 is the checkpoint's
    assert _without(resumed.history, "prefix_cache_hit") == _without(full.history, "prefix_cache_hit")
    for key, value in recorder.states[-1]["model"].items():
        assert torch.equal(resumed_recorder.states[-1]["model"][key], value), key


def _drops_by_file(monkeypatch) -> collections.Counter:
    """How often nbtl.features.batches dropped the pages of each mapped file (by name) from here on: a spy that lets
    every call through."""
    import nbtl.features.batches as batches
    from nbtl.data import images

    drops, release = collections.Counter(), images.release_pages

    def counted(part):
        dropped = release(part)
        if dropped:
            start = part.data_ptr()
            (name,) = [Path(m.filename).name for b, m in images._MAPPINGS.items() if b <= start < b + m.nbytes]
            drops[name] += 1
        return dropped

    monkeypatch.setattr(batches, "release_pages", counted)
    return drops


def test_an_entry_drops_the_pages_it_reads_and_writes_as_it_goes_whatever_its_size(
    splits, weights, tmp_path, monkeypatch
):
    """Issue 18's seventh scale run: a subsample's 0.5-GB data file made a 2.8-GB entry (4 views of Lite1's last
    block), whose written pages stayed in the trial because only a large *data file* dropped them; the twelfth: a
    small entry's val and test (0.5 GB, under the large mark) stayed in the trial that wrote them. An entry's pages,
    and the data file's it reads, now leave the process every RELEASE_BATCHES and when each pass ends, whatever the
    sizes, and it is the same entry as one computed from the images in memory."""
    import nbtl.features.prefix as prefix
    from nbtl.data.arrayfile import open_splits, write_splits

    written = {}  # the writer's resident KiB of each file when the entry is complete (its mapping then let go)
    forget = prefix.forget_mapping

    def seen_then_forget(array):
        written[Path(array.filename).name] = mapped_kib(Path(array.filename))
        forget(array)

    monkeypatch.setattr(prefix, "forget_mapping", seen_then_forget)
    model = build_transfer(TrialConfig(freeze_blocks=3), 10, state_dict=weights).model
    expected = PrefixStore(None, views=3, seed=5).get(model, splits, 3, augmentation=AUGMENTATION, state_dict=weights)
    monkeypatch.setattr("nbtl.features.batches.RELEASE_BATCHES", 2)
    drops = _drops_by_file(monkeypatch)
    folder = write_splits(splits, tmp_path / "data")
    mapped = open_splits(folder)
    entry = PrefixStore(tmp_path / "store", max_bytes=1024, views=3, seed=5).get(
        model, mapped, 3, augmentation=AUGMENTATION, state_dict=weights
    )  # below the default mark of 1 GiB, as is its data file
    assert entry.path is not None and not entry.hit
    batches = {part: -(-len(getattr(splits, part)) // 32) for part in ("train", "val", "test")}
    every_2 = {part: n // 2 + n % 2 for part, n in batches.items()}  # every 2 batches, and the last
    assert drops["train.npy"] == 3 * every_2["train"]
    assert drops["images.npy"] == sum(every_2.values()) + 2 * every_2["train"]  # val, test, and each view read
    for part in ("train", "val", "test"):
        size = (entry.path / f"{part}.npy").stat().st_size // 1024
        assert written[f"{part}.npy"] < size / 4, part
        assert torch.equal(getattr(entry, part), getattr(expected, part)), part
    # a few pages stay where a read mapped its neighbours too (the kernel's fault-around: 64 KiB of a 300-KiB file)
    assert mapped_kib(folder / "images.npy") < (folder / "images.npy").stat().st_size // 1024 / 2


def test_an_entry_of_a_large_data_file_is_computed_a_batch_at_a_time_and_drops_its_pages(
    splits, weights, tmp_path, monkeypatch
):
    """Issue 18: a prefix entry of a large mapped data file draws its augmented views a batch at a time (never all the
    views' images in memory) and drops the pages it read and wrote as it goes; it is the same entry, bit for bit, as
    the one computed from the same images in memory (the same random draws, in the same order), and as the views of
    the whole split drawn first, image by image, then run in the store's batches (how the store drew them before)."""
    from nbtl.data import make_augmentation
    from nbtl.data.arrayfile import open_splits, write_splits
    from nbtl.features.batches import eval_mode, forward_in_batches

    folder = write_splits(splits, tmp_path / "data")
    mapped = open_splits(folder)
    model = build_transfer(TrialConfig(freeze_blocks=3), 10, state_dict=weights).model
    small = PrefixStore(tmp_path / "small", max_bytes=1024, views=3, seed=5)
    expected = small.get(model, splits, 3, augmentation=AUGMENTATION, state_dict=weights)
    transform, reference = make_augmentation(AUGMENTATION), torch.empty_like(expected.train)
    with eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        for view in range(3):
            images = splits.train.images
            views = torch.stack([transform(image) for image in images]) if view else images
            forward_in_batches(model, views, 3, torch.device("cpu"), reference[view])
    assert torch.equal(expected.train, reference)
    monkeypatch.setenv("NBTL_LARGE_MAPPING_BYTES", "1")
    monkeypatch.setattr("nbtl.features.batches.BATCH_SIZE", {"cpu": 7})  # short batches: the last window reaches back
    monkeypatch.setattr("nbtl.features.batches.RELEASE_BATCHES", 2)
    large = PrefixStore(tmp_path / "large", max_bytes=1024, views=3, seed=5)
    entry = large.get(model, mapped, 3, augmentation=AUGMENTATION, state_dict=weights)
    assert entry.path is not None and not entry.hit  # computed, into files
    assert mapped_kib(folder / "images.npy") < (folder / "images.npy").stat().st_size // 1024 / 2
    monkeypatch.setattr("nbtl.features.batches.BATCH_SIZE", {"cpu": 32})
    again = PrefixStore(tmp_path / "again", max_bytes=1024, views=3, seed=5)
    same = again.get(model, mapped, 3, augmentation=AUGMENTATION, state_dict=weights)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(same, part), getattr(expected, part)), part
        torch.testing.assert_close(getattr(entry, part), getattr(expected, part), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(entry.train[1], entry.train[0])  # the views are augmented


def test_trials_reading_a_large_entry_drop_its_pages_and_train_the_same(splits, weights, tmp_path, monkeypatch):
    """Issue 18's eighth scale run: trials training above a 2.6-GB entry (4 views of Lite1's last block) held every
    page they read (peak PSS 11.4 GB, 5.0 GB of it file pages): the trial that wrote the entry trained from its
    writable mapping, and a trial that loaded it from an untracked one, so neither dropped a page. Now both read a
    tracked read-only mapping and drop what they read every few steps, and train exactly as the trials that keep
    the pages."""
    from nbtl.data.arrayfile import open_splits, write_splits

    mapped = open_splits(write_splits(splits, tmp_path / "data"))
    kept_store = PrefixStore(tmp_path / "kept")  # below the default mark of 1 GiB: its train pages stay
    kept, _ = _train(mapped, weights, prefix_store=kept_store)
    (folder,) = _entries(tmp_path / "kept")
    assert mapped_kib(folder / "train.npy") > (folder / "train.npy").stat().st_size // 1024 / 2
    for part in ("val", "test"):  # read once an evaluation: dropped after each, whatever the size (scale run 12)
        assert mapped_kib(folder / f"{part}.npy") < (folder / f"{part}.npy").stat().st_size // 1024 / 4, part
    monkeypatch.setenv("NBTL_LARGE_MAPPING_BYTES", "1")  # every entry is large
    monkeypatch.setattr("nbtl.feeds.RELEASE_STEPS", 1)
    for store in [PrefixStore(tmp_path / "dropped") for _ in range(2)]:  # one trial computes it, one loads it
        result, _ = _train(mapped, weights, prefix_store=store)
        assert [m["prefix_blocks"] for m in result.history] == [7, 7]
        (folder,) = _entries(tmp_path / "dropped")
        for part in ("train", "val", "test"):
            npy = folder / f"{part}.npy"
            assert mapped_kib(npy) < npy.stat().st_size // 1024 / 4, part
        assert _without(result.history, "prefix_cache_hit") == _without(kept.history, "prefix_cache_hit")
        assert result.final["test_accuracy"] == kept.final["test_accuracy"]
    assert [m["prefix_cache_hit"] for m in result.history] == [1.0, 1.0]


def test_the_end_of_a_search_removes_the_entries_its_killed_trials_left_half_written(splits, weights, tmp_path):
    """The eighth scale run left a 3.1-GB staging folder behind: its last trial was computing an entry when the
    time budget killed it. What a search's end removes (nbtl.search.tuner.run_trials): such folders, and nothing
    else; the finished entry still serves its trials."""
    from nbtl.features import remove_staging

    store = PrefixStore(tmp_path)
    model = build_transfer(TrialConfig(freeze_blocks=3), 10, state_dict=weights).model
    entry = store.get(model, splits, 3, state_dict=weights)
    staging = entry.path.with_name(f".{entry.path.name}.4242-0badc0de.tmp")  # named as _compute_on_disk names them
    staging.mkdir()
    (staging / "train.npy").write_bytes(b"\0" * 4096)
    assert remove_staging(tmp_path) == 4096
    assert not staging.exists() and [p.name for p in tmp_path.iterdir() if p.is_dir()] == [entry.path.name]
    again = PrefixStore(tmp_path).get(model, splits, 3, state_dict=weights)
    assert again.hit and torch.equal(again.train, entry.train)
    assert remove_staging(tmp_path / "absent") == 0


def test_an_entry_that_takes_its_clean_view_from_the_probes_drops_the_pages_it_copies(
    splits, weights, tmp_path, monkeypatch
):
    """Issue 18's ninth scale run: a trial with a head warm-up computed 4 views of Lite1's last block and took view
    0, val and test from the probe's clean-view entry in one copy each, so the pages of both (3.5 GB of file pages)
    stayed in it. The copy now goes a chunk at a time, dropping what it read and wrote whatever the entries' size (the
    twelfth scale run: the probe's val and test, 0.5 GB under the large mark, stayed in the trial that copied them),
    and makes the same entry as one computed without the probe's."""
    import nbtl.features.prefix as prefix
    from nbtl.data.arrayfile import open_splits, write_splits

    written = {}  # the writer's resident KiB of each file of the entry when it is complete
    forget = prefix.forget_mapping

    def seen_then_forget(array):
        written[Path(array.filename).name] = mapped_kib(Path(array.filename))
        forget(array)

    monkeypatch.setattr(prefix, "forget_mapping", seen_then_forget)
    monkeypatch.setattr("nbtl.features.batches.RELEASE_BATCHES", 1)
    monkeypatch.setattr("nbtl.features.batches.BATCH_SIZE", {"cpu": 4})
    drops = _drops_by_file(monkeypatch)
    mapped = open_splits(write_splits(splits, tmp_path / "data"))
    model = build_transfer(TrialConfig(freeze_blocks=3), 10, state_dict=weights).model
    computed = PrefixStore(tmp_path / "computed", max_bytes=1024, views=3, seed=5).get(
        model, mapped, 3, augmentation=AUGMENTATION, state_dict=weights
    )  # no clean-view entry to copy from: every view, val and test computed
    store = PrefixStore(tmp_path / "copied", max_bytes=1024, views=3, seed=5)
    probe = store.get(model, mapped, 3, augmentation=AUGMENTATION, state_dict=weights, clean_only=True)
    written.clear()
    drops.clear()
    copied = PrefixStore(tmp_path / "copied", max_bytes=1024, views=3, seed=5).get(
        model, mapped, 3, augmentation=AUGMENTATION, state_dict=weights
    )
    assert copied.train.shape[0] == 3 and torch.equal(copied.train[0], probe.train[0])
    for part in ("val", "test"):  # a chunk of 4 rows at a time, the probe's file read and the entry's written
        assert drops[f"{part}.npy"] == 2 * -(-len(getattr(splits, part)) // 4), part
    for part in ("train", "val", "test"):
        size = (copied.path / f"{part}.npy").stat().st_size // 1024
        assert written[f"{part}.npy"] < size / 4, part
        assert torch.equal(getattr(copied, part), getattr(computed, part)), part
