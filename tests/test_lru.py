"""voxgate.lru.make_newest: the step every bounded table takes, by count and by weight."""

from collections import OrderedDict

import pytest

from voxgate.lru import make_newest


def test_count_limit_drops_oldest_first_and_returns_them() -> None:
    table: OrderedDict[str, int] = OrderedDict()
    dropped: list[int] = []
    for i, key in enumerate("abcde"):
        table[key] = i
        dropped += make_newest(table, key, limit=3)
    assert list(table) == ["c", "d", "e"]
    assert dropped == [0, 1]


def test_use_moves_an_entry_to_the_newest_end() -> None:
    table = OrderedDict([("a", 1), ("b", 2), ("c", 3)])
    assert make_newest(table, "a", limit=3) == []
    table["d"] = 4
    assert make_newest(table, "d", limit=3) == [2]  # "b" is now the oldest, not "a"
    assert list(table) == ["c", "a", "d"]


def test_weight_limit_keeps_the_newest_even_when_it_alone_is_too_heavy() -> None:
    table = OrderedDict([("a", 5), ("b", 5)])
    assert make_newest(table, "b", weight=lambda v: v, max_weight=10) == []
    table["c"] = 3
    assert make_newest(table, "c", weight=lambda v: v, max_weight=10) == [5]
    assert list(table) == ["b", "c"]
    table["d"] = 50
    assert make_newest(table, "d", weight=lambda v: v, max_weight=10) == [5, 3]
    assert list(table) == ["d"]


def test_count_and_weight_together() -> None:
    table: OrderedDict[int, int] = OrderedDict()
    for i in range(6):
        table[i] = 1
        make_newest(table, i, limit=4, weight=lambda v: v, max_weight=100)
    assert list(table) == [2, 3, 4, 5]
    table[9] = 98
    make_newest(table, 9, limit=4, weight=lambda v: v, max_weight=100)
    assert list(table) == [4, 5, 9]  # 1 + 1 + 98 = 100


def test_missing_key_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        make_newest(OrderedDict(), "x", limit=1)
