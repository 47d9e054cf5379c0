"""Random ids drawn in blocks: unique, version 4, never shared with a forked child."""

from __future__ import annotations

import copy
import os
import pickle
import threading
import uuid

from kat_scheduler import ids


def test_ids_are_random_version_4_uuids_and_unique_across_blocks() -> None:
    made = [ids.uuid4() for _ in range(3 * ids.BLOCK // 16 + 5)]
    assert all(isinstance(u, uuid.UUID) and u.version == 4 and u.variant == uuid.RFC_4122 for u in made)
    assert len(set(made)) == len(made)


def test_an_id_behaves_as_the_plain_uuid_of_its_value() -> None:
    made = ids.uuid4()
    plain = uuid.UUID(str(made))
    assert made == plain and hash(made) == hash(plain) and {made: 1}[plain] == 1
    assert (made.hex, made.bytes, made.int, made.version) == (plain.hex, plain.bytes, plain.int, 4)
    assert str(made) == str(plain) and repr(made) == repr(plain)
    for copied in (pickle.loads(pickle.dumps(made)), copy.deepcopy(made)):
        assert type(copied) is uuid.UUID and copied == made


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    ids.uuid4()  # the parent holds a partly used block
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


def test_token_hex_has_the_length_asked_for() -> None:
    assert len(ids.token_hex()) == 32 and len(ids.token_hex(8)) == 16 and ids.token_hex() != ids.token_hex()


def test_threads_drawing_at_once_never_share_an_id() -> None:
    made: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def draw(into: list[uuid.UUID]) -> None:
        into.extend(ids.uuid4() for _ in range(ids.BLOCK // 16 + 100))

    threads = [threading.Thread(target=draw, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [u for into in made for u in into]
    assert len(set(everything)) == len(everything) == 4 * (ids.BLOCK // 16 + 100)
