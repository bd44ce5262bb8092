"""``dyngrad.utils.data``: TensorDataset indexing, and DataLoader batching (sizes, the partial
last batch, drop_last), seeded shuffling (reproducible, new every epoch, a permutation),
``len()``, custom collation and datasets that are not made of tensors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dyngrad as dg
from dyngrad.utils.data import DataLoader, Dataset, TensorDataset, default_collate


def dataset(n=10):
    """Sample i is (i, [2i, 2i+1]) so every batch says which samples it holds."""
    return TensorDataset(dg.arange(n), dg.arange(2 * n).reshape(n, 2).float())


def ids(loader) -> list[list[int]]:
    return [b[0].numpy().tolist() for b in loader]


# ------------------------------------------------------------------ TensorDataset


def test_tensor_dataset_len_and_indexing():
    ds = dataset(5)
    assert len(ds) == 5
    i, x = ds[3]
    assert i.item() == 3 and x.numpy().tolist() == [6.0, 7.0]
    assert ds[-1][0].item() == 4
    idx, rows = ds[1:3]
    assert idx.numpy().tolist() == [1, 2] and rows.shape == (2, 2)


def test_tensor_dataset_single_tensor_gives_one_tuples():
    ds = TensorDataset(dg.zeros(3, 2))
    sample = ds[0]
    assert isinstance(sample, tuple) and len(sample) == 1 and sample[0].shape == (2,)


def test_tensor_dataset_index_out_of_range_raises():
    with pytest.raises(IndexError):
        dataset(5)[5]


def test_tensor_dataset_size_mismatch_raises():
    with pytest.raises(ValueError, match="Size mismatch between tensors: 4 vs 3"):
        TensorDataset(dg.zeros(3), dg.zeros(4))


def test_tensor_dataset_needs_a_tensor():
    with pytest.raises(ValueError, match="at least one tensor"):
        TensorDataset()


def test_tensor_dataset_samples_share_values_with_the_source():
    x = dg.arange(6).reshape(3, 2).float()
    np.testing.assert_array_equal(TensorDataset(x)[2][0].numpy(), x.numpy()[2])


def test_dataset_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        Dataset()[0]
    with pytest.raises(NotImplementedError):
        len(Dataset())


# ------------------------------------------------------------------ batching


def test_batches_in_order_with_a_partial_last_batch_by_default():
    loader = DataLoader(dataset(10), batch_size=4)
    assert ids(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(loader) == 3


def test_drop_last_drops_only_the_partial_batch():
    loader = DataLoader(dataset(10), batch_size=4, drop_last=True)
    assert ids(loader) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(loader) == 2
    exact = DataLoader(dataset(8), batch_size=4, drop_last=True)
    assert len(exact) == 2 and len(list(exact)) == 2


def test_batch_shapes_and_dtypes_follow_the_dataset():
    i, x = next(iter(DataLoader(dataset(10), batch_size=3)))
    assert i.shape == (3,) and i.dtype is dg.int64
    assert x.shape == (3, 2) and x.dtype is dg.float32
    np.testing.assert_array_equal(x.numpy(), [[0, 1], [2, 3], [4, 5]])


def test_batch_larger_than_dataset_gives_one_batch_unless_drop_last():
    assert ids(DataLoader(dataset(3), batch_size=10)) == [[0, 1, 2]]
    loader = DataLoader(dataset(3), batch_size=10, drop_last=True)
    assert list(loader) == [] and len(loader) == 0


def test_batch_size_none_yields_single_samples():
    loader = DataLoader(dataset(3), batch_size=None)
    samples = list(loader)
    assert len(loader) == 3 and len(samples) == 3
    assert samples[2][0].shape == () and samples[2][0].item() == 2


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="positive integer"):
        DataLoader(dataset(3), batch_size=0)


def test_empty_dataset_gives_no_batches():
    loader = DataLoader(TensorDataset(dg.zeros(0, 2)), batch_size=2)
    assert list(loader) == [] and len(loader) == 0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 30), bs=st.integers(1, 12), drop_last=st.booleans(),
       shuffle=st.booleans())
def test_len_equals_number_of_batches_and_sizes_add_up(n, bs, drop_last, shuffle):
    loader = DataLoader(dataset(n), batch_size=bs, drop_last=drop_last, shuffle=shuffle)
    batches = ids(loader)
    assert len(loader) == len(batches)
    assert all(len(b) == bs for b in batches[:-1])
    if batches:
        assert len(batches[-1]) == (bs if drop_last else (n % bs or bs))
    assert sum(map(len, batches)) == (n - n % bs if drop_last else n)


# ------------------------------------------------------------------ shuffling


def test_shuffle_covers_every_sample_exactly_once_per_epoch():
    loader = DataLoader(dataset(23), batch_size=5, shuffle=True, seed=1)
    for _ in range(3):
        seen = sorted(i for b in ids(loader) for i in b)
        assert seen == list(range(23))


def test_shuffle_is_a_real_permutation_and_differs_across_epochs():
    loader = DataLoader(dataset(50), batch_size=50, shuffle=True, seed=0)
    e1, e2 = ids(loader)[0], ids(loader)[0]
    assert e1 != list(range(50)) and e1 != e2


def test_shuffle_is_reproducible_with_the_same_seed():
    a = DataLoader(dataset(20), batch_size=6, shuffle=True, seed=7)
    b = DataLoader(dataset(20), batch_size=6, shuffle=True, seed=7)
    assert [ids(a) for _ in range(3)] == [ids(b) for _ in range(3)]
    c = DataLoader(dataset(20), batch_size=6, shuffle=True, seed=8)
    assert ids(c) != ids(DataLoader(dataset(20), batch_size=6, shuffle=True, seed=7))


def test_shuffled_batches_keep_samples_aligned_across_tensors():
    for i, x in DataLoader(dataset(17), batch_size=4, shuffle=True, seed=3):
        np.testing.assert_array_equal(x.numpy(), np.stack([2 * i.numpy(), 2 * i.numpy() + 1],
                                                          1))


def test_shuffle_with_drop_last_drops_a_random_remainder_each_epoch():
    loader = DataLoader(dataset(10), batch_size=4, shuffle=True, drop_last=True, seed=0)
    epochs = [sorted(i for b in ids(loader) for i in b) for _ in range(5)]
    assert all(len(e) == 8 and len(set(e)) == 8 for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1


def test_shuffle_does_not_touch_dyngrads_global_generator():
    dg.manual_seed(0)
    a = dg.rand(3).numpy()
    dg.manual_seed(0)
    list(DataLoader(dataset(10), batch_size=3, shuffle=True))
    np.testing.assert_array_equal(dg.rand(3).numpy(), a)


# ------------------------------------------------------------------ collation


def test_custom_collate_fn_receives_the_list_of_samples():
    received = []

    def collate(samples):
        received.append(samples)
        return sum(int(s[0].item()) for s in samples)

    loader = DataLoader(dataset(5), batch_size=2, collate_fn=collate)
    assert list(loader) == [1, 5, 4]
    assert [len(s) for s in received] == [2, 2, 1]
    assert all(isinstance(s, tuple) and len(s) == 2 for s in received[0])


class Squares(Dataset):
    """A dataset that is not made of tensors: dicts of Python numbers and numpy arrays."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"x": float(i), "y": i * i, "flag": i % 2 == 0,
                "vec": np.full(3, i, np.float32), "name": f"s{i}"}


def test_default_collate_batches_dicts_numbers_arrays_and_strings():
    batches = list(DataLoader(Squares(), batch_size=2))
    assert len(batches) == 3
    b = batches[1]
    assert set(b) == {"x", "y", "flag", "vec", "name"}
    assert b["x"].numpy().tolist() == [2.0, 3.0] and b["x"].dtype.is_floating_point
    assert b["y"].numpy().tolist() == [4, 9] and b["y"].dtype is dg.int64
    assert b["flag"].numpy().tolist() == [True, False] and b["flag"].dtype is dg.bool_
    assert b["vec"].shape == (2, 3) and b["vec"].dtype is dg.float32
    assert b["name"] == ["s2", "s3"]
    assert batches[2]["y"].numpy().tolist() == [16]


def test_plain_python_list_works_as_a_dataset():
    loader = DataLoader([(i, float(i) / 2) for i in range(5)], batch_size=2)
    first = next(iter(loader))
    assert isinstance(first, tuple)
    assert first[0].numpy().tolist() == [0, 1] and first[1].numpy().tolist() == [0.0, 0.5]
    assert len(loader) == 3


def test_default_collate_stacks_tensors_and_recurses_into_lists():
    out = default_collate([[dg.zeros(2), 1], [dg.ones(2), 2]])
    assert isinstance(out, list) and out[0].shape == (2, 2) and out[1].numpy().tolist() == [1, 2]


def test_default_collate_names_unsupported_types():
    with pytest.raises(TypeError, match="cannot batch samples of type object"):
        default_collate([object(), object()])


def test_tensor_dataset_fast_path_equals_per_sample_collation():
    ds = dataset(11)
    fast = list(DataLoader(ds, batch_size=4, shuffle=True, seed=2))
    slow = list(DataLoader(ds, batch_size=4, shuffle=True, seed=2,
                           collate_fn=default_collate))
    for (i1, x1), (i2, x2) in zip(fast, slow):
        np.testing.assert_array_equal(i1.numpy(), i2.numpy())
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())


def test_a_training_loop_over_the_loader():
    dg.manual_seed(0)
    x = dg.randn(32, 3)
    y = x @ dg.tensor([[1.0], [-2.0], [0.5]])
    model = dg.nn.Linear(3, 1)
    opt = dg.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, seed=0)
    for _ in range(30):
        for xb, yb in loader:
            opt.zero_grad()
            dg.nn.functional.mse_loss(model(xb), yb).backward()
            opt.step()
    np.testing.assert_allclose(model.weight.detach().numpy(), [[1.0, -2.0, 0.5]], atol=1e-3)


# ------------------------------------------------------------------ worker processes


class _Indexed(Dataset):
    """Sample i: (i as a 1-element tensor, the worker's id, the worker's first random)."""

    def __len__(self):
        return 22

    def __getitem__(self, i):
        from dyngrad.utils.data import get_worker_info
        info = get_worker_info()
        return dg.tensor([float(i)]), (-1 if info is None else info.id), float(dg.rand(1))


class _Failing(_Indexed):
    def __getitem__(self, i):
        if i == 5:
            raise ValueError("sample 5 is corrupt")
        return dg.tensor([float(i)])


def _values(loader):
    out = []
    for batch in loader:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.append(first.numpy().tolist())
    return out


@pytest.mark.parametrize("num_workers", [1, 3])
def test_worker_processes_give_the_same_batches_in_order(num_workers):
    x, y = dg.arange(60.0).reshape(30, 2), dg.arange(30)
    plain = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, seed=3)
    workers = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, seed=3,
                         num_workers=num_workers)
    for _ in range(2):  # (two epochs: new permutations, the same in both)
        assert _values(workers) == _values(plain)


def test_workers_are_seeded_apart_and_see_their_worker_info():
    loader = DataLoader(_Indexed(), batch_size=2, num_workers=2)
    batches = list(loader)
    ids = sorted({int(b[1][0]) for b in batches})
    assert ids == [0, 1]  # (batches alternate between the two workers)
    draws = [float(b[2][0]) for b in batches]
    assert len(set(draws)) == len(draws)  # (each worker its own generator state)
    assert [b[0].reshape(-1).numpy().tolist() for b in batches][:2] == [[0.0, 1.0],
                                                                         [2.0, 3.0]]
    seen = []
    list(DataLoader(_Indexed(), batch_size=2, num_workers=2,
                    worker_init_fn=lambda i: seen.append(i)))  # (runs in the children)
    assert seen == []


def test_an_error_in_a_worker_is_raised_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"Caught ValueError in DataLoader worker process "
                                           r"0\.\nOriginal Traceback(.|\n)*sample 5 is corrupt"):
        list(DataLoader(_Failing(), batch_size=2, num_workers=2))


def test_persistent_workers_early_break_and_pin_memory():
    loader = DataLoader(_Indexed(), batch_size=4, num_workers=2, persistent_workers=True)
    first, second = list(loader), list(loader)
    assert len(first) == len(second) == 6 and loader._pool is not None
    workers = loader._pool[0]
    assert all(p.is_alive() for p in workers)
    for _ in DataLoader(_Indexed(), batch_size=4, num_workers=2):
        break  # (the workers are stopped when the iterator goes)
    with pytest.warns(UserWarning, match="'pin_memory' argument is set as true but no "
                                         "accelerator is found"):
        list(DataLoader(TensorDataset(dg.ones(4, 2)), batch_size=2, pin_memory=True))


def test_worker_argument_errors_are_pytorchs():
    ds = TensorDataset(dg.ones(4, 2))
    with pytest.raises(ValueError, match="num_workers option should be non-negative"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="prefetch_factor option could only be specified"):
        DataLoader(ds, prefetch_factor=2)


def test_a_spawned_worker_gives_the_same_batches():
    x = dg.arange(20.0).reshape(10, 2)
    loader = DataLoader(TensorDataset(x), batch_size=3, num_workers=1,
                        multiprocessing_context="spawn")
    assert _values(loader) == _values(DataLoader(TensorDataset(x), batch_size=3))
