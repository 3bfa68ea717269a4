"""The worker's ready manifests are an LRU: past its bound the devices that poll keep their place."""

import pytest

from fleet import manifests
from fleet.auth import hash_token
from fleet.lru import LRU
from tests import factories


def test_an_lru_keeps_the_hot_keys_and_its_bound() -> None:
    lru: LRU[str, int] = LRU(3)
    for i in range(3):
        lru.put(f"k{i}", i)
    assert lru.get("k0") == 0  # k0 is now the most recent
    lru.put("k3", 3)  # one past the bound: the least recently used (k1) goes
    assert list(lru) == ["k2", "k0", "k3"] and lru.evictions == 1
    lru.put("k2", 22)  # an update is a use, not an insert past the bound
    assert len(lru) == 3 and lru.get("k1") is None and lru.get("k2") == 22
    assert lru.get("missing", -1) == -1 and list(lru) == ["k0", "k3", "k2"]


def test_an_lru_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        LRU(0)


@pytest.mark.django_db
def test_a_hot_device_stays_in_memory_while_a_cold_fleet_streams_past(monkeypatch) -> None:
    """A worker holding 3 ready manifests, one hot device polling between 20 others: the hot one is
    served from memory every time (the same object, no Redis round trip); memory holds 3, never more.
    The dict this replaced was emptied when full, sending the hot device back to Redis too."""
    factories.release(factories.staged_version("fraud", "v1", seed=1))
    monkeypatch.setattr(manifests, "_ready", LRU(3))
    _, hot = factories.device(name="hot")
    cold = [factories.device(name=f"cold-{i}")[1] for i in range(20)]
    first = manifests.poll(hot)
    for token in cold:
        manifests.poll(token)
        assert manifests.poll(hot) is first
        assert len(manifests._ready) <= 3
    assert hash_token(hot) in manifests._ready
    assert manifests._ready.evictions >= 18
    assert hash_token(cold[0]) not in manifests._ready
