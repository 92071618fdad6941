"""The farm's fair queue: clients served in turns, positions as the dispatcher will serve them."""

from __future__ import annotations

from builder.farm import Build, FairQueue


def _b(client: str, n: int) -> Build:
    return Build(id=f"{client}{n}", key=f"{client}{n}", client=client, filename="m.c", use_cache=True, source=b"x")


def test_clients_are_served_in_turns() -> None:
    q = FairQueue()
    for i in range(4):
        q.push(_b("A", i))
    q.push(_b("B", 0))
    q.push(_b("C", 0))
    q.push(_b("C", 1))
    assert 7 == len(q)
    order = [q.pop().id for _ in range(7)]
    assert ["A0", "B0", "C0", "A1", "C1", "A2", "A3"] == order
    assert q.pop() is None and 0 == len(q)


def test_position_matches_the_order_of_service() -> None:
    q = FairQueue()
    builds = [_b("A", i) for i in range(5)] + [_b("B", 0), _b("B", 1), _b("C", 0)]
    for b in builds:
        q.push(b)
    positions = {b.id: q.position(b) for b in builds}
    served = []
    while (b := q.pop()) is not None:
        served.append(b.id)
    assert served == sorted(positions, key=positions.__getitem__)
    assert list(range(8)) == sorted(positions.values())


def test_retry_goes_to_the_head_of_its_client_and_remove_works() -> None:
    q = FairQueue()
    a0, a1, b0 = _b("A", 0), _b("A", 1), _b("B", 0)
    for b in (a0, a1, b0):
        q.push(b)
    assert q.pop() is a0
    q.push(a0, front=True)
    assert 1 == q.position(a0) and 2 == q.count("A")  # A just had its turn: B first
    assert q.remove(b0) and not q.remove(b0)
    assert q.position(b0) is None
    assert [a0, a1] == [q.pop(), q.pop()] and q.pop() is None


def test_slots_follow_the_cgroup_cpu_quota() -> None:
    """One slot per usable core, capped by a container's CPU quota (cpus: 1.5 -> 1)."""
    from builder.limits import default_slots, slots_for

    assert 2 == slots_for(2, "max 100000\n")
    assert 1 == slots_for(2, "150000 100000\n")
    assert 1 == slots_for(4, "50000 100000")
    assert 3 == slots_for(4, "300000 100000")
    assert 2 == slots_for(2, "800000 100000")
    assert 2 == slots_for(2, "garbage")
    assert default_slots() >= 1
