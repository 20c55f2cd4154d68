"""The agent's offline spool: order, acks, bounds, restarts and bad files.

The spool keeps bytes; these are serialized AgentMessages, as the link gives it.
"""

from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SpoolError
from agent.spool import Spool, Spooled
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2


def heartbeat(n: int) -> bytes:
    # Uptime carries a marker so that each message can be told apart after a replay.
    return agent_pb2.AgentMessage(
        heartbeat=agent_pb2.Heartbeat(health=fleet_pb2.Health(uptime_seconds=float(n)))
    ).SerializeToString()


def result(n: int) -> bytes:
    return agent_pb2.AgentMessage(
        command_result=agent_pb2.CommandResult(command_id=f"c{n}", message="x" * 40)
    ).SerializeToString()


def body(m: Spooled) -> str:
    return agent_pb2.AgentMessage.FromString(m.body).WhichOneof("body") or ""


def marker(m: Spooled) -> str:
    message = agent_pb2.AgentMessage.FromString(m.body)
    if message.WhichOneof("body") == "heartbeat":
        return f"h{int(message.heartbeat.health.uptime_seconds)}"
    return message.command_result.command_id


def test_messages_replay_in_order_and_acks_forget_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", "p1", 1 << 20)
    seqs = [spool.append(heartbeat(n), precious=False) for n in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [m.seq for m in spool.pending(0, 100)] == [1, 2, 3, 4, 5]
    assert [m.seq for m in spool.pending(3, 100)] == [4, 5]
    spool.acknowledge(3)
    assert [marker(m) for m in spool.pending(0, 100)] == ["h3", "h4"]
    assert spool.stats().pending == 2
    spool.close()


def test_writers_on_several_threads_each_get_their_own_seq(tmp_path: Path) -> None:
    # The link writes heartbeats and acks from asyncio's pool, lesson events and
    # command results from its spool-writer thread: one spool, used from several threads.
    spool = Spool(tmp_path / "spool.db", "p1", 1 << 20)

    def write(n: int) -> list[int | None]:
        seqs = [spool.append(heartbeat(n * 100 + i), precious=i % 2 == 0) for i in range(50)]
        spool.acknowledge(0)
        return seqs

    with ThreadPoolExecutor(4) as pool:
        written = [seq for seqs in pool.map(write, range(4)) for seq in seqs]
    assert None not in written
    assert sorted(s for s in written if s is not None) == list(range(1, 201))
    assert spool.stats().pending == 200
    assert len({marker(m) for m in spool.pending(0, 1000)}) == 200
    spool.close()


def test_spool_and_counter_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", "p1", 1 << 20)
    for n in range(3):
        spool.append(heartbeat(n), precious=False)
    spool.acknowledge(1)
    spool.close()
    again = Spool(tmp_path / "spool.db", "p1", 1 << 20)
    assert [m.seq for m in again.pending(0, 10)] == [2, 3]
    assert again.append(heartbeat(9), precious=False) == 4
    again.close()


def test_a_new_spool_follows_the_controllers_count(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", "p1", 1 << 20)
    spool.append(heartbeat(0), precious=False)
    spool.append(result(1), precious=True)
    # The controller already stored up to 500 from this device's earlier spool.
    spool.welcome(500)
    assert [(m.seq, marker(m)) for m in spool.pending(0, 10)] == [(501, "h0"), (502, "c1")]
    assert spool.append(heartbeat(2), precious=False) == 503
    # Once lined up, the controller's number means stored: a later Welcome forgets.
    spool.welcome(502)
    assert [m.seq for m in spool.pending(0, 10)] == [503]


def test_when_full_the_oldest_heartbeats_go_never_results(tmp_path: Path) -> None:
    size = len(heartbeat(10))
    bound = len(result(0)) + size * 3
    spool = Spool(tmp_path / "spool.db", "p1", max_bytes=bound)
    spool.append(result(0), precious=True)
    for n in range(10, 16):
        spool.append(heartbeat(n), precious=False)
    kept = [marker(m) for m in spool.pending(0, 100)]
    assert kept == ["c0", "h13", "h14", "h15"]
    assert spool.stats().dropped == 3
    assert spool.stats().pending_bytes <= bound
    # Full of results, a heartbeat has no room; a result still does.
    for n in range(1, 4):
        spool.append(result(n), precious=True)
    assert spool.append(heartbeat(20), precious=False) is None
    assert [marker(m) for m in spool.pending(0, 100)] == ["c0", "c1", "c2", "c3"]
    assert spool.stats().dropped == 7


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=40))
def test_bound_and_losses_hold_for_any_sequence(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[bool, int]]
) -> None:
    """Any mix of appends and acks: precious messages are all kept, in order, the
    rest are dropped oldest first and counted, and the bound holds while it can."""
    path = tmp_path_factory.mktemp("spool") / "spool.db"
    max_bytes = 400
    spool = Spool(path, "p1", max_bytes)
    precious_seqs: list[int] = []
    acked = 0
    appended = 0
    for n, (precious, acks) in enumerate(steps):
        seq = spool.append(result(n) if precious else heartbeat(n), precious=precious)
        if seq is not None:
            appended += 1
            if precious:
                precious_seqs.append(seq)
        if acks and seq is not None:
            acked = max(acked, seq - acks)
            spool.acknowledge(acked)
    pending = spool.pending(0, 1000)
    seqs = [m.seq for m in pending]
    assert seqs == sorted(seqs)
    assert [s for s in precious_seqs if s > acked] == [
        m.seq for m in pending if body(m) == "command_result"
    ]
    stats = spool.stats()
    if stats.pending_bytes > max_bytes:
        assert all(body(m) == "command_result" for m in pending[:-1])
    assert stats.next_seq == appended + 1
    spool.close()


def test_a_garbage_file_is_moved_aside_not_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR):
        spool = Spool(path, "p1", 1 << 20)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("spool.db.bad-")]
    assert len(moved) == 1
    assert moved[0].read_bytes().startswith(b"this is not a database")
    assert "spool unreadable, moved aside" in caplog.text
    assert spool.append(heartbeat(1), precious=False) == 1


def test_a_truncated_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, "p1", 1 << 22)
    for n in range(300):
        spool.append(result(n), precious=True)
    spool.close()
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 2)
    again = Spool(path, "p1", 1 << 22)
    assert any(p.name.startswith("spool.db.bad-") for p in tmp_path.iterdir())
    assert again.stats().pending == 0


def test_another_devices_spool_is_not_replayed(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path, "p1", 1 << 20).append(heartbeat(1), precious=False)
    other = Spool(path, "p2", 1 << 20)
    assert other.pending(0, 10) == []
    assert any(p.name.startswith("spool.db.bad-") for p in tmp_path.iterdir())


def test_a_directory_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(SpoolError, match=r"spool .*spool\.db: unable to open"):
        Spool(tmp_path / "spool.db", "p1", 1 << 20)


def test_committed_messages_survive_a_crash_without_close(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, "p1", 1 << 20)
    for n in range(3):
        spool.append(heartbeat(n), precious=False)
    # No close(): the write-ahead log still holds the commits, as after a power cut.
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert rows == 3


def test_a_write_after_close_is_refused_and_the_spool_is_kept(tmp_path: Path) -> None:
    """A heartbeat's write that loses the race with shutdown's close must not take the
    closed connection's error for a bad file and move the spool, and its unacked
    messages, aside."""
    path = tmp_path / "spool.db"
    spool = Spool(path, "p1", 1 << 20)
    for n in range(3):
        spool.append(heartbeat(n), precious=False)
    spool.close()
    with pytest.raises(SpoolError, match="is closed"):
        spool.append(heartbeat(9), precious=False)
    with pytest.raises(SpoolError, match="is closed"):
        spool.stats()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db"]
    again = Spool(path, "p1", 1 << 20)
    assert [marker(m) for m in again.pending(0, 100)] == ["h0", "h1", "h2"]
    again.close()
