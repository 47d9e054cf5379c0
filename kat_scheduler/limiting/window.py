"""Moving windows in Redis, counted on the Redis server's clock: the counters of the rate limits.

A window holds the moments it counted (integer microseconds of the Redis server's ``TIME``) for one
part of a limit (``amount`` per ``seconds``) and one name (a group's starts, or its releases). A
moment ``now`` may be counted iff the window holds fewer than ``amount`` moments after
``now - seconds``, that is, iff its ``amount``-th newest moment is at or before ``now - seconds``:
so any window ``(t - seconds, t]`` holds at most ``amount`` moments, whatever ``t``.

One Lua script does all of it in one atomic call (:meth:`MovingWindows.take`): it reads the
server's clock, tests every part of a limit and counts up to the number wanted in all of them at
the same moment, or in none; it answers how many it counted and that moment, or, when it counted
none, the moment the next one could be counted. So the moment a start is recorded at is exactly
the moment its window counted, read by one clock for every worker on every machine. (The
``limits`` library, which parses the limit strings, counts with each client's own clock and does
not say at which moment it counted; a limit of several parts there is a test and then a hit per
part.) A moment never precedes one a window already holds (the server's clock stepped back, or a
second call within one microsecond): it is then one microsecond after the newest, and that is the
moment answered.

Keys: ``<prefix>:<amount>/<seconds>s:<name>``, one sorted set per part and name, each member
``<moment>:<i>`` (the ``i``-th counted at that moment) scored by its moment in microseconds; each
write removes the moments that fell out of the window and sets the key to expire ``seconds``
after its newest moment, so an idle window leaves nothing behind. The default prefix is
:data:`PREFIX`; a limiter's names are ``starts:<group>`` and ``released:<group>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

#: The Redis keys of the windows start with this.
PREFIX = "kat_scheduler:rate_windows"
#: Seconds to wait for the Redis server (connecting, and for an answer).
TIMEOUT = 5.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# KEYS: one sorted set per part. ARGV[1]: how many to count (0: only look); then per part its
# amount and its length in microseconds. Microseconds stay integral Lua numbers (exact below
# 2^53) and go out as integer replies or through '%.0f' (Lua's tostring keeps 14 digits only).
# Counting: {taken, moment, now}; moment: when counted (taken > 0), else when the next may be.
# Looking: {now, remaining_1, opens_1, remaining_2, opens_2, ...}.
_SCRIPT = """
local wanted = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function us(n) return string.format('%.0f', n) end
local parts = #KEYS
if wanted > 0 then
  for i = 1, parts do
    local newest = redis.call('ZREVRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if newest[2] ~= nil and tonumber(newest[2]) >= now then now = tonumber(newest[2]) + 1 end
  end
end
local take = wanted
local opens = 0
local looked = {now}
for i = 1, parts do
  local amount = tonumber(ARGV[2 * i])
  local length = tonumber(ARGV[2 * i + 1])
  local counted = redis.call('ZCOUNT', KEYS[i], '(' .. us(now - length), '+inf')
  local room = amount - counted
  if room < 0 then room = 0 end
  if room < take then take = room end
  local at
  if room == 0 then
    at = tonumber(redis.call('ZREVRANGE', KEYS[i], amount - 1, amount - 1, 'WITHSCORES')[2]) + length
    if at > opens then opens = at end
  else
    local oldest = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. us(now - length), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if oldest[2] ~= nil then at = tonumber(oldest[2]) + length else at = now + length end
  end
  looked[2 * i] = room
  looked[2 * i + 1] = at
end
if wanted == 0 then return looked end
if take == 0 then return {0, opens, now} end
for i = 1, parts do
  local length = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', us(now - length))
  local stamp = us(now)
  local members = {}
  for j = 1, take do
    members[#members + 1] = stamp
    members[#members + 1] = stamp .. ':' .. j
    if #members >= 1000 or j == take then
      redis.call('ZADD', KEYS[i], unpack(members))
      members = {}
    end
  end
  redis.call('PEXPIRE', KEYS[i], math.floor(length / 1000) + 1)
end
return {take, now, now}
"""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a limit: at most ``amount`` in any ``seconds``."""

    amount: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`MovingWindows.take` counted."""

    #: How many were counted (in every part), 0 when a part had no room.
    count: int
    #: ``count`` > 0: the moment they were counted at; 0: the moment the next could be.
    at: datetime
    #: The Redis server's clock when it answered.
    now: datetime


@dataclass(frozen=True, slots=True)
class Room:
    """What one part of a limit has room for now (:meth:`MovingWindows.room`)."""

    part: Part
    #: How many more it would count now.
    remaining: int
    #: When its room grows by one: its ``amount``-th newest moment leaves the window when full,
    #: else its oldest (a part that holds none: ``seconds`` from now).
    opens: datetime


def moment(microseconds: int) -> datetime:
    """The UTC time of a count of microseconds since the epoch (exactly: no float between)."""
    return _EPOCH + timedelta(microseconds=microseconds)


class MovingWindows:
    """The windows of one Redis database (``redis://``, ``rediss://`` or ``unix://`` URL)."""

    def __init__(self, url: str, prefix: str = PREFIX, *, timeout: float = TIMEOUT) -> None:
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self.script = self.client.register_script(_SCRIPT)

    def key(self, part: Part, name: str) -> str:
        return f"{self.prefix}:{part.amount}/{part.seconds}s:{name}"

    def take(self, parts: Sequence[Part], name: str, wanted: int = 1) -> Taken:
        """Count up to ``wanted`` at one moment in every part of ``parts``, or none when a part is
        full; what was counted, and when (or when the next could be)."""
        if wanted < 1:
            raise ValueError(f"take at least one, not {wanted}")
        count, at, now = self._run(parts, name, wanted)
        return Taken(int(count), moment(int(at)), moment(int(now)))

    def room(self, parts: Sequence[Part], name: str) -> tuple[list[Room], datetime]:
        """Each part's room now (nothing counted), and the Redis server's clock."""
        answer = self._run(parts, name, 0)
        rooms = [Room(part, int(answer[2 * i + 1]), moment(int(answer[2 * i + 2]))) for i, part in enumerate(parts)]
        return rooms, moment(int(answer[0]))

    def openings(self, parts: Sequence[Part], name: str, n: int) -> tuple[list[datetime], datetime]:
        """When each of the next ``n`` counts could be made, earliest first (at most the smallest
        ``amount`` of ``parts``; a count that could be made now: the Redis server's clock now), and
        that clock. The ``k``-th needs ``k`` rooms in every part: in a part with ``r`` rooms now,
        the ``k``-th beyond them opens when its ``k``-th oldest moment leaves the window. Read
        apart from any count (a hint for timing, not a reservation: :meth:`take` decides)."""
        n = min([n, *(part.amount for part in parts)])
        if n < 1:
            return [], moment(int(self._server_time()))
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for part in parts:
            pipe.zrange(self.key(part, name), 0, -1, withscores=True)
        clock, *held = pipe.execute()
        now = int(clock[0]) * 1_000_000 + int(clock[1])
        opens = [now] * n
        for part, members in zip(parts, held, strict=True):
            length = part.seconds * 1_000_000
            inside = sorted(int(score) for _, score in members if int(score) > now - length)
            for k in range(n):
                leaves = len(inside) - part.amount + k  # this one and all before it must leave
                if leaves >= 0:
                    opens[k] = max(opens[k], inside[leaves] + length)
        return [moment(at) for at in opens], moment(now)

    def _server_time(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1_000_000 + int(micros)

    def close(self) -> None:
        self.client.close()

    def _run(self, parts: Sequence[Part], name: str, wanted: int) -> list[Any]:
        if not parts:
            raise ValueError("a limit has at least one part")
        args: list[int] = [wanted]
        for part in parts:
            args += [part.amount, part.seconds * 1_000_000]
        answer: list[Any] = self.script(keys=[self.key(part, name) for part in parts], args=args)
        return answer
