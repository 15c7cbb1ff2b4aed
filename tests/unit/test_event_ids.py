"""Unit tests (no Redis): generated event ids stay unique across forked processes and threads.

Event ids are the idempotency key (dedup markers, ctx.once): two processes forked from one publisher (gunicorn
--preload, Celery prefork, multiprocessing's fork) that generate the same id would have real events skipped as
duplicates. Layout and time order are tested in test_keys.py.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable

from streamproc import new_event_id

CHILDREN = 4
IDS_EACH = 3_000


def random_part(event_id: str) -> int:
    """The 62 random bits of an id (after the variant bits)."""
    return int(event_id, 16) & ((1 << 62) - 1)


def ids_of_forked_children(make_id: Callable[[], str], children: int = CHILDREN, each: int = IDS_EACH) -> list[str]:
    """Fork `children` processes from this one after it made ids itself, release them all at once through a pipe,
    and return every id they and this process made meanwhile."""
    before = [make_id() for _ in range(10)]  # the parent has made ids (and holds state for more) before it forks
    go_read, go_write = os.pipe()
    outputs: list[int] = []
    pids: list[int] = []
    for _ in range(children):
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait for the start signal, make ids, send them, exit without cleanup
            status = 1
            try:
                os.close(out_read)
                os.read(go_read, 1)
                data = "\n".join(make_id() for _ in range(each)).encode()
                with os.fdopen(out_write, "wb") as out:
                    out.write(data)
                status = 0
            finally:
                os._exit(status)
        os.close(out_write)
        outputs.append(out_read)
        pids.append(pid)
    os.write(go_write, b"g" * children)
    mine = [make_id() for _ in range(each)]
    theirs: list[str] = []
    for fd in outputs:
        with os.fdopen(fd, "rb") as got:
            theirs.extend(got.read().decode().split("\n"))
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0, "a child failed"
    for fd in (go_read, go_write):
        os.close(fd)
    return before + mine + theirs


def test_children_forked_from_one_publisher_generate_unique_ids() -> None:
    ids = ids_of_forked_children(new_event_id)
    assert len(ids) == 10 + IDS_EACH * (CHILDREN + 1)
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"{len(duplicated)} ids generated twice, e.g. {duplicated[:3]}"
    # Stronger than "no duplicate id" (which needs two processes in the same ms): no two ids share their random
    # bits, whenever they were made. A random source copied by fork fails this however the children are scheduled.
    tails = Counter(random_part(i) for i in ids)
    assert max(tails.values()) == 1, "forked processes drew the same random bits"
    for eid in ids[::500]:
        assert uuid.UUID(eid).version == 7


def test_threads_generate_unique_ids() -> None:
    made: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(len(made))

    def make(out: list[str]) -> None:
        start.wait()
        out.extend(new_event_id() for _ in range(IDS_EACH))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in made for i in out]
    assert len({random_part(i) for i in ids}) == len(ids)


def test_ids_of_one_process_sort_in_creation_order_below_the_millisecond() -> None:
    ids = [new_event_id() for _ in range(2_000)]
    # 12 bits of sub-millisecond time follow the ms: only ids made within the same 1/4096 ms may be out of order.
    stamps = [int(i, 16) >> 64 for i in ids]
    assert stamps == sorted(stamps)
