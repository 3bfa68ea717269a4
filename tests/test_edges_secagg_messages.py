"""Edges of the secure-aggregation wire format: exact field names, sizes at their limits, and the exact
refusal (code, message, field) every malformed message gets.

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``agent/secagg/messages.py`` would otherwise alter silently. Pure: no database, no network.
"""

import pytest

from agent.secagg import messages as m
from agent.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Refusal,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)


def b(n: int, fill: int = 7) -> bytes:
    return bytes([fill]) * n


def refusal(call) -> tuple[str, str, str | None]:
    with pytest.raises(Refusal) as info:
        call()
    r = info.value
    assert str(r) == r.message
    assert r.as_error() == {"error": {"code": r.code, "message": r.message, "field": r.field}}
    return r.code, r.message, r.field


SHARE = EncryptedShare(3, 4, b(12, 1), b(82, 2), b(16, 3), b(16, 4))
SHARE_WIRE = {
    "sender": 3,
    "to": 4,
    "nonce": m.b64(b(12, 1)),
    "ct": m.b64(b(82, 2)),
    "s_commit": m.b64(b(16, 3)),
    "b_commit": m.b64(b(16, 4)),
}


def test_protocol_constants() -> None:
    """Sizes and codes both ends rely on; a change is a protocol change."""
    assert m.PHASES == ("advertise", "share", "masked", "unmask")
    assert (m.DONE, m.FAILED) == ("done", "failed")
    assert m.COMMIT_BYTES == 16
    assert m.SHARE_PLAINTEXT_BYTES == 66 and m.SHARE_CIPHERTEXT_BYTES == 82
    assert m.MAX_INDEX == 1_048_576
    assert len(m.REFUSAL_CODES) == len(set(m.REFUSAL_CODES)) == 14


def test_base64url_without_padding() -> None:
    assert m.b64(b"\xfb\xff") == "-_8"
    assert m.b64(b"") == ""
    assert m.b64(b"\x00\x00\x17") == "AAAX"  # only padding is stripped, never a trailing data character
    assert m.b64(b"\x00") == "AA"
    assert m.unb64("-_8", 2, "x") == b"\xfb\xff"
    assert m.unb64("AAAAAA", None, "x") == bytes(4)


def test_unb64_refusals() -> None:
    assert refusal(lambda: m.unb64(5, 2, "c_pk")) == ("bad_message", "c_pk must be a base64url string", "c_pk")
    assert refusal(lambda: m.unb64("A", None, "c_pk")) == ("bad_message", "c_pk is not base64url", "c_pk")
    assert refusal(lambda: m.unb64("AAAA", 2, "c_pk")) == ("bad_message", "c_pk must be 2 bytes", "c_pk")


@pytest.mark.parametrize(("size", "max_size", "limit"), [(32, None, 50), (None, 30, 48), (None, None, 8), (3, 60, 88)])
def test_unb64_length_limit_before_decoding(size: int | None, max_size: int | None, limit: int) -> None:
    """Text longer than base64 of the expected size (plus slack) is refused before it is decoded."""
    _, message, _ = refusal(lambda: m.unb64("A" * (limit + 1), size, "v", max_size))
    assert message == "v must be a base64url string"
    try:
        m.unb64("A" * limit, size, "v", max_size)
    except Refusal as r:
        assert r.message != "v must be a base64url string"


@pytest.mark.parametrize(("value", "ok"), [(1, True), (m.MAX_INDEX, True), (0, False), (m.MAX_INDEX + 1, False)])
def test_index_bounds(value: int, ok: bool) -> None:
    if ok:
        assert m._index(value, "sender") == value
    else:
        assert refusal(lambda: m._index(value, "sender")) == (
            "bad_message",
            "sender must be a device index in [1, 1048576]",
            "sender",
        )


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_index_must_be_a_plain_int(value: object) -> None:
    assert refusal(lambda: m._index(value, "to"))[2] == "to"


@pytest.mark.parametrize(("value", "ok"), [("r", True), ("r" * 128, True), ("", False), ("r" * 129, False), (7, False)])
def test_round_id_bounds(value: object, ok: bool) -> None:
    if ok:
        assert m._round(value) == value
    else:
        assert refusal(lambda: m._round(value)) == (
            "bad_message",
            "round must be a string of 1..128 characters",
            "round",
        )


def test_fields_exactly() -> None:
    assert refusal(lambda: m._fields([], {"a"}, "kind")) == (
        "bad_message",
        "kind needs exactly the fields ['a'], got list",
        "kind",
    )
    assert refusal(lambda: m._fields({"b": 1, "a": 2}, {"a"}, "kind"))[1] == (
        "kind needs exactly the fields ['a'], got ['a', 'b']"
    )
    assert m._fields({"a": 1}, {"a"}, "kind") == {"a": 1}


def test_advertise_wire() -> None:
    adv = AdvertiseKeys("r1", 2, b(32, 1), b(32, 2), b(64, 3))
    wire = {"round": "r1", "sender": 2, "c_pk": m.b64(b(32, 1)), "s_pk": m.b64(b(32, 2)), "sig": m.b64(b(64, 3))}
    assert adv.to_wire() == wire
    assert AdvertiseKeys.from_wire(wire) == adv
    for name, size in (("c_pk", 32), ("s_pk", 32), ("sig", 64)):
        bad = {**wire, name: m.b64(b(size - 1))}
        assert refusal(lambda bad=bad: AdvertiseKeys.from_wire(bad)) == (
            "bad_message",
            f"{name} must be {size} bytes",
            name,
        )
    assert refusal(lambda: AdvertiseKeys.from_wire({**wire, "round": ""}))[2] == "round"
    assert refusal(lambda: AdvertiseKeys.from_wire({**wire, "sender": 0}))[2] == "sender"
    assert refusal(lambda: AdvertiseKeys.from_wire(None))[1].startswith("advertise needs exactly the fields")


def test_encrypted_share_wire() -> None:
    assert SHARE.to_wire() == SHARE_WIRE
    assert EncryptedShare.from_wire(SHARE_WIRE) == SHARE
    for name, size in (("nonce", 12), ("ct", 82), ("s_commit", 16), ("b_commit", 16)):
        bad = {**SHARE_WIRE, name: m.b64(b(size + 1))}
        assert refusal(lambda bad=bad: EncryptedShare.from_wire(bad)) == (
            "bad_message",
            f"{name} must be {size} bytes",
            name,
        )
    assert refusal(lambda: EncryptedShare.from_wire({**SHARE_WIRE, "sender": 0}))[2] == "sender"
    assert refusal(lambda: EncryptedShare.from_wire({**SHARE_WIRE, "to": 0}))[2] == "to"
    assert refusal(lambda: EncryptedShare.from_wire({**SHARE_WIRE, "x": 1}))[1].startswith(
        "share needs exactly the fields ['b_commit', 'ct', 'nonce', 's_commit', 'sender', 'to']"
    )


def test_share_keys_wire_and_limits() -> None:
    sk = ShareKeys("r1", 3, b(16, 9), (SHARE,), b(64, 8))
    wire = {"round": "r1", "sender": 3, "b_commit": m.b64(b(16, 9)), "shares": [SHARE_WIRE], "sig": m.b64(b(64, 8))}
    assert sk.to_wire() == wire
    assert ShareKeys.from_wire(wire) == sk
    assert ShareKeys.from_wire({**wire, "shares": [SHARE_WIRE] * 3}, max_shares=3).shares == (SHARE,) * 3
    too_many = ("bad_message", "shares must be a list of at most 2", "shares")
    assert refusal(lambda: ShareKeys.from_wire({**wire, "shares": [SHARE_WIRE] * 3}, max_shares=2)) == too_many
    assert refusal(lambda: ShareKeys.from_wire({**wire, "shares": {"0": SHARE_WIRE}}))[2] == "shares"
    # the default cap is checked before any share is parsed
    assert refusal(lambda: ShareKeys.from_wire({**wire, "shares": [{}] * 4097}))[1] == (
        "shares must be a list of at most 4096"
    )
    assert refusal(lambda: ShareKeys.from_wire({**wire, "shares": [{}] * 4096}))[2] == "share"
    assert refusal(lambda: ShareKeys.from_wire({**wire, "b_commit": m.b64(b(15))}))[2] == "b_commit"
    assert refusal(lambda: ShareKeys.from_wire({**wire, "sig": m.b64(b(63))}))[2] == "sig"
    assert refusal(lambda: ShareKeys.from_wire({**wire, "sender": -1}))[2] == "sender"
    assert refusal(lambda: ShareKeys.from_wire({**wire, "round": 1}))[2] == "round"
    assert refusal(lambda: ShareKeys.from_wire({**wire, "shares": [{**SHARE_WIRE, "to": 0}]}))[2] == "to"
    assert refusal(lambda: ShareKeys.from_wire([]))[2] == "share_keys"


def test_masked_input_wire_and_size_cap() -> None:
    mi = MaskedInput("r1", 5, b(40))
    assert mi.to_wire() == {"round": "r1", "sender": 5, "vector": m.b64(b(40))}
    assert MaskedInput.from_wire(mi.to_wire()) == mi
    assert MaskedInput.from_wire(mi.to_wire(), max_bytes=40) == mi
    assert refusal(lambda: MaskedInput.from_wire({**mi.to_wire(), "vector": m.b64(b(60))}, max_bytes=40))[2] == (
        "vector"
    )
    huge = {**mi.to_wire(), "vector": "A" * (4 * ((1 << 20) + 3) // 3 + 5)}
    expected = ("bad_message", "vector must be a base64url string", "vector")
    assert refusal(lambda: MaskedInput.from_wire(huge)) == expected
    assert refusal(lambda: MaskedInput.from_wire({**mi.to_wire(), "sender": 0}))[2] == "sender"
    assert refusal(lambda: MaskedInput.from_wire({**mi.to_wire(), "round": ""}))[2] == "round"
    assert refusal(lambda: MaskedInput.from_wire({"round": "r1"}))[2] == "masked_input"


def test_unmask_request_wire() -> None:
    req = UnmaskRequest("r1", frozenset({9, 2, 5}))
    assert req.to_wire() == {"round": "r1", "survivors": [2, 5, 9]}
    assert UnmaskRequest.from_wire({"round": "r1", "survivors": [9, 2, 5, 2]}) == req
    assert refusal(lambda: UnmaskRequest.from_wire({"round": "r1", "survivors": "1,2"})) == (
        "bad_message",
        "survivors must be a list of device indices",
        "survivors",
    )
    assert refusal(lambda: UnmaskRequest.from_wire({"round": "r1", "survivors": [1, 0]}))[1] == (
        "survivors must be a device index in [1, 1048576]"
    )
    assert refusal(lambda: UnmaskRequest.from_wire({"round": "", "survivors": [1]}))[2] == "round"
    assert refusal(lambda: UnmaskRequest.from_wire({"survivors": [1]}))[2] == "unmask_request"


def test_unmask_request_length_cap() -> None:
    over = [1] * (m.MAX_INDEX + 1)
    assert refusal(lambda: UnmaskRequest.from_wire({"round": "r", "survivors": over}))[2] == "survivors"
    assert UnmaskRequest.from_wire({"round": "r", "survivors": [1] * m.MAX_INDEX}).survivors == {1}


def test_unmask_shares_wire_and_keys() -> None:
    sh = UnmaskShares("r1", 4, {7: b(33, 1), 2: b(33, 2)}, {3: b(33, 3)})
    wire = {
        "round": "r1",
        "sender": 4,
        "b_shares": {"2": m.b64(b(33, 2)), "7": m.b64(b(33, 1))},
        "s_shares": {"3": m.b64(b(33, 3))},
    }
    assert sh.to_wire() == wire
    assert list(sh.to_wire()["b_shares"]) == ["2", "7"]
    assert UnmaskShares.from_wire(wire) == sh
    assert UnmaskShares.from_wire(wire, max_shares=2) == sh
    assert UnmaskShares.from_wire({**wire, "b_shares": {"1048576": m.b64(b(33))}}).b_shares == {m.MAX_INDEX: b(33)}
    for name in ("b_shares", "s_shares"):
        assert refusal(lambda name=name: UnmaskShares.from_wire({**wire, name: []})) == (
            "bad_message",
            f"{name} must be an object of at most 4096 shares",
            name,
        )
        assert refusal(lambda name=name: UnmaskShares.from_wire(wire, max_shares=0))[1].startswith("b_shares must be")
        for key in ("a1", "-1", "12345678", "", " 1"):
            assert refusal(lambda name=name, key=key: UnmaskShares.from_wire({**wire, name: {key: m.b64(b(33))}})) == (
                "bad_message",
                f"{name} keys must be device indices",
                name,
            )
        assert refusal(lambda name=name: UnmaskShares.from_wire({**wire, name: {"0": m.b64(b(33))}}))[1] == (
            f"{name} must be a device index in [1, 1048576]"
        )
        assert refusal(lambda name=name: UnmaskShares.from_wire({**wire, name: {"1": m.b64(b(32))}}))[1] == (
            f"{name} must be 33 bytes"
        )
    assert refusal(lambda: UnmaskShares.from_wire({**wire, "s_shares": {str(i): "" for i in range(1, 4098)}}))[2] == (
        "s_shares"
    )
    assert refusal(lambda: UnmaskShares.from_wire({**wire, "sender": 0}))[2] == "sender"
    assert refusal(lambda: UnmaskShares.from_wire({**wire, "round": ""}))[2] == "round"
    assert refusal(lambda: UnmaskShares.from_wire({}))[2] == "unmask_shares"


def test_refusal_codes_are_closed() -> None:
    r = Refusal("late", "too late", None)
    assert (r.code, r.message, r.field) == ("late", "too late", None)
    with pytest.raises(AssertionError):
        Refusal("whatever", "x")
