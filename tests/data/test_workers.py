"""An error inside a DataLoader worker reaches the caller as the same one-line error as without workers."""

from __future__ import annotations

import pytest
import torch

from fif.data.sources.common import SourceError
from fif.data.specs import BadSampleError
from fif.data.workers import WorkerSafe, loader_items


class Items(torch.utils.data.Dataset):
    """Item i is i, but item ``bad`` raises ``error``."""

    def __init__(self, bad: int, error: Exception):
        self.bad, self.error = bad, error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        if i == self.bad:
            raise self.error
        return torch.tensor(i)


def first_error(dataset, workers: int) -> Exception:
    loader = torch.utils.data.DataLoader(WorkerSafe(dataset), batch_size=None, num_workers=workers)
    with pytest.raises(Exception) as e:
        list(loader_items(loader))
    return e.value


@pytest.mark.parametrize("error", [
    SourceError("/data/birds/robin/a.png (listed in /data/birds): image file not found"),
    KeyError("unknown dataset 'x'; did you mean 'y'?"),
    BadSampleError("b.png: cannot decode image", index=2, where="b.png"),
], ids=["source error", "key error", "error with more arguments"])
def test_a_worker_error_is_the_main_process_error(error):
    with pytest.raises(type(error)) as inline:
        Items(2, error)[2]
    from_worker = first_error(Items(2, error), workers=1)
    assert type(from_worker) is type(error) and str(from_worker) == str(inline.value)
    assert "Traceback" not in str(from_worker) and "worker" not in str(from_worker)


def test_items_pass_through_in_order():
    loader = torch.utils.data.DataLoader(WorkerSafe(Items(-1, ValueError())), batch_size=None, num_workers=2)
    assert [int(x) for x in loader_items(loader)] == [0, 1, 2, 3]


class NeedsTwo(ValueError):
    """An error whose constructor cannot be called with its message alone."""

    def __init__(self, file: str, why: str):
        super().__init__(f"{file}: {why}")


def test_an_error_that_takes_other_arguments_comes_back_as_its_base_with_the_same_message():
    from_worker = first_error(Items(1, NeedsTwo("a.png", "truncated")), workers=1)
    assert type(from_worker) is ValueError and str(from_worker) == "a.png: truncated"
