"""Task and message ids: random version 4 UUIDs and random hex tokens, never repeated."""

from __future__ import annotations

import os
import threading
import uuid

from kat_scheduler import ids


def test_ids_are_unique_random_version_4_uuids() -> None:
    made = [ids.uuid4() for _ in range(20_000)]
    assert all(type(u) is uuid.UUID and u.version == 4 and u.variant == uuid.RFC_4122 for u in made)
    assert len(set(made)) == len(made)


def test_token_hex_has_the_length_asked_for_and_differs_each_time() -> None:
    assert len(ids.token_hex()) == 32 and len(ids.token_hex(8)) == 16
    tokens = {ids.token_hex() for _ in range(1000)}
    assert len(tokens) == 1000 and all(int(token, 16) >= 0 for token in tokens)


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    ids.uuid4()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave without running pytest's teardown
        os.close(read)
        os.write(write, "".join(ids.uuid4().hex for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {ids.uuid4().hex for _ in range(10)}
    assert len(child) == 10 and not child & parent


def test_threads_drawing_at_once_never_share_an_id() -> None:
    made: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def draw(into: list[uuid.UUID]) -> None:
        into.extend(ids.uuid4() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [u for into in made for u in into]
    assert len(set(everything)) == len(everything) == 4 * 5000
