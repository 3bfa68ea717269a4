"""The device list: a total, counts per status that agree with the list, search by name or id, and
sortable columns that page through every device exactly once (keyset pages, NULLs where they belong)."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from fleet.models import Device

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet() -> list[Device]:
    cache.clear()
    now = timezone.now()
    rows = []
    for i in range(130):
        seen = None if i % 10 == 0 else now - timedelta(seconds=10 if i < 100 else 4000, milliseconds=i)
        rows.append(
            Device(
                name=f"d{(i * 37) % 130:03d}",
                labels={"region": "eu" if i % 2 else "us"},
                token_hash=f"{i:064x}",
                last_seen_at=seen,
                installed={"fraud": "v2"} if i % 3 == 0 else {"fraud": "v1"},
            )
        )
    Device.objects.bulk_create(rows)
    # Enrolment times apart, and two devices with the same last poll (ties are broken by id).
    for k, d in enumerate(Device.objects.order_by("name")):
        Device.objects.filter(pk=d.pk).update(enrolled_at=now - timedelta(minutes=k))
    a, b = Device.objects.exclude(last_seen_at=None).order_by("name")[:2]
    Device.objects.filter(pk=b.pk).update(last_seen_at=a.last_seen_at)
    return list(Device.objects.all())


def walk(client: Client, params: dict) -> list[str]:
    """Every page of the list, following the page's own next links."""
    names, resp = [], client.get("/devices/", params)
    while True:
        names += [it["d"].name for it in resp.context["items"]]
        nxt = resp.context["next_url"]
        if not nxt:
            return names
        resp = client.get("/devices/" + nxt)


def test_the_list_says_how_many_and_counts_each_status(viewer_client, fleet) -> None:
    resp = viewer_client.get("/devices/")
    assert resp.context["total"] == 130
    tabs = {t["key"]: t["n"] for t in resp.context["status_tabs"]}
    recent = timezone.now() - timedelta(minutes=5)
    expect = {
        "online": sum(d.last_seen_at is not None and d.last_seen_at > recent for d in fleet),
        "never": sum(d.last_seen_at is None for d in fleet),
    }
    assert tabs[""] == 130 and tabs["online"] == expect["online"] and tabs["never"] == expect["never"] == 13
    assert tabs["online"] + tabs["stale"] + tabs["offline"] + tabs["never"] == 130
    html = resp.content.decode()
    assert "130 devices" in html and f'online <span class="count">{tabs["online"]}</span>' in html
    # Counts follow the other filters; the total follows the chosen status too.
    eu = viewer_client.get("/devices/", {"labels": "region=eu", "status": "offline"})
    eu_devices = [d for d in fleet if d.labels["region"] == "eu"]
    assert {t["key"]: t["n"] for t in eu.context["status_tabs"]}[""] == len(eu_devices)
    offline = [d for d in eu_devices if d.last_seen_at and d.last_seen_at < timezone.now() - timedelta(hours=1)]
    assert eu.context["total"] == len(offline) == len(walk(viewer_client, {"labels": "region=eu", "status": "offline"}))


def test_search_by_part_of_the_name_or_the_start_of_the_id(viewer_client, fleet) -> None:
    assert walk(viewer_client, {"q": "d12"}) and all("d12" in n for n in walk(viewer_client, {"q": "d12"}))
    target = fleet[5]
    found = viewer_client.get("/devices/", {"q": str(target.pk)[:8]})
    assert target.pk in [it["d"].pk for it in found.context["items"]]
    assert found.context["total"] == len(found.context["items"])
    upper = viewer_client.get("/devices/", {"q": str(target.pk)[:8].upper()})
    assert target.pk in [it["d"].pk for it in upper.context["items"]]
    assert viewer_client.get("/devices/", {"q": "no such device"}).context["total"] == 0


@pytest.mark.parametrize(
    ("sort", "key"),
    [
        ("name", lambda d: (d.name, d.pk)),
        ("-name", lambda d: (d.name, d.pk)),
        ("-enrolled", lambda d: (d.enrolled_at, d.pk)),
        ("enrolled", lambda d: (d.enrolled_at, d.pk)),
    ],
)
def test_sorted_columns_page_through_every_device_once(viewer_client, fleet, sort, key) -> None:
    names = walk(viewer_client, {"sort": sort})
    expect = [d.name for d in sorted(Device.objects.all(), key=key, reverse=sort.startswith("-"))]
    assert names == expect


def test_last_seen_sorts_put_never_seen_devices_where_they_belong(viewer_client, fleet) -> None:
    devices = list(Device.objects.all())
    seen = [d for d in devices if d.last_seen_at]
    never = [d for d in devices if not d.last_seen_at]
    recent_first = walk(viewer_client, {"sort": "-last_seen"})
    expect = sorted(seen, key=lambda d: (d.last_seen_at, d.pk), reverse=True) + sorted(
        never, key=lambda d: d.pk, reverse=True
    )
    assert recent_first == [d.name for d in expect], "most recent first, never seen last"
    silent_first = walk(viewer_client, {"sort": "last_seen"})
    expect = sorted(never, key=lambda d: d.pk) + sorted(seen, key=lambda d: (d.last_seen_at, d.pk))
    assert silent_first == [d.name for d in expect], "never seen first: the longest silent"


def test_headers_say_the_sort_and_a_second_click_reverses_it(viewer_client, fleet) -> None:
    resp = viewer_client.get("/devices/", {"sort": "name", "status": "online"})
    cols = resp.context["columns"]
    assert cols["name"]["aria"] == "ascending" and "sort=-name" in cols["name"]["url"]
    assert "status=online" in cols["name"]["url"], "sorting keeps the filters"
    assert cols["last_seen"]["aria"] == "none"
    assert 'aria-sort="ascending"' in resp.content.decode()


def test_a_cursor_of_another_sort_or_an_edited_one_starts_over(viewer_client, fleet) -> None:
    first = viewer_client.get("/devices/", {"sort": "name"})
    cursor = first.context["next_url"].split("after=")[1]
    other = viewer_client.get(f"/devices/?sort=-enrolled&after={cursor}")
    assert other.status_code == 200 and other.context["first_url"] is None
    assert [it["d"].name for it in other.context["items"]] == walk(viewer_client, {"sort": "-enrolled"})[:50]
    edited = viewer_client.get("/devices/", {"sort": "name", "after": cursor[:-3] + "abc"})
    assert edited.status_code == 200 and edited.context["items"][0]["d"].name == first.context["items"][0]["d"].name
