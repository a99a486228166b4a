"""The Redis job store's Lua scripts: admission within the bounds, making room for a result, forgetting a job.

They run atomically inside Redis, so replicas sharing one Redis cannot both take its last place, and a job
is forgotten together with every index entry and byte count that points at it. Keys are as redis_store.py
describes them, under the prefix passed as ARGV[1].
"""

from __future__ import annotations

ANONYMOUS = "-"  # the owner key of jobs made without an identity
GROUP = "replicas"  # the consumer group every replica of a model reads the shared queue in

# Shared by the scripts: forget a job and everything that points at it; forget what has expired.
COMMON = """
local P = ARGV[1]
-- Out of the shared queue: its entry acknowledged and deleted (never taken, or taken again), its requests gone.
local function dequeue(id)
  local entry = redis.call('HGET', P .. 'entries', id)
  if entry then
    redis.pcall('XACK', P .. 'queue', '@GROUP@', entry)
    redis.call('XDEL', P .. 'queue', entry)
    redis.call('HDEL', P .. 'entries', id)
  end
  redis.call('DEL', P .. 'request:' .. id)
end
local function forget(id)
  local meta = redis.call('HGET', P .. 'meta', id)
  if meta then
    local owner, api, size = string.match(meta, '^(.-)\\n(.-)\\n(%d+)$')
    if owner then
      redis.call('ZREM', P .. 'owner:' .. owner, id)
      redis.call('ZREM', P .. 'index:' .. owner .. ':' .. api, id)
      if tonumber(size) > 0 then redis.call('DECRBY', P .. 'bytes', size) end
    end
    redis.call('HDEL', P .. 'meta', id)
  end
  dequeue(id)
  redis.call('DEL', P .. 'job:' .. id, P .. 'result:' .. id, P .. 'content:' .. id)
  redis.call('ZREM', P .. 'jobs', id)
  redis.call('ZREM', P .. 'done:empty', id)
  redis.call('ZREM', P .. 'done:kept', id)
end
local function prune(now, ttl, unfinished_ttl)
  for _, z in ipairs({'done:empty', 'done:kept'}) do
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. z, '-inf', now - ttl, 'LIMIT', 0, 200)) do forget(id) end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'jobs', '-inf', now - unfinished_ttl, 'LIMIT', 0, 200)) do
    if redis.call('EXISTS', P .. 'job:' .. id) == 0 then forget(id) end
  end
end
""".replace("@GROUP@", GROUP)
# ARGV: prefix, id, record, created, now, owner, api, max_jobs, max_per_owner, unfinished_ttl, ttl, requests
# (a shared-queue job's requests, appended to the queue with the record; empty: the replica runs it itself)
CREATE = (
    COMMON
    + """
local id, record, created, now = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local owner, api, max_jobs, max_owner = ARGV[6], ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local unfinished_ttl, ttl = tonumber(ARGV[10]), tonumber(ARGV[11])
prune(now, ttl, unfinished_ttl)
local owned = P .. 'owner:' .. owner
if redis.call('ZCARD', owned) >= max_owner then
  local ids = redis.call('ZRANGE', owned, 0, -1)
  local victim = nil
  for _, z in ipairs({'done:empty', 'done:kept'}) do
    for _, candidate in ipairs(ids) do
      if not victim and redis.call('ZSCORE', P .. z, candidate) then victim = candidate end
    end
  end
  if not victim then return 'owner' end
  forget(victim)
end
if redis.call('ZCARD', P .. 'jobs') >= max_jobs then
  local victim = redis.call('ZRANGE', P .. 'done:empty', 0, 0)[1] or redis.call('ZRANGE', P .. 'done:kept', 0, 0)[1]
  if not victim then return 'full' end
  forget(victim)
end
redis.call('SET', P .. 'job:' .. id, record, 'EX', unfinished_ttl)
redis.call('ZADD', P .. 'jobs', created, id)
redis.call('ZADD', owned, created, id)
redis.call('ZADD', P .. 'index:' .. owner .. ':' .. api, created, id)
redis.call('HSET', P .. 'meta', id, owner .. '\\n' .. api .. '\\n0')
if ARGV[12] ~= '' then
  redis.call('SET', P .. 'request:' .. id, ARGV[12], 'EX', unfinished_ttl)
  redis.call('HSET', P .. 'entries', id, redis.call('XADD', P .. 'queue', '*', 'job', id))
end
return 'ok'
"""
)
# ARGV: prefix, size, max_bytes, now, ttl, unfinished_ttl
ROOM = (
    COMMON
    + """
prune(tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
local size, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
while tonumber(redis.call('GET', P .. 'bytes') or '0') + size > limit do
  local victim = redis.call('ZRANGE', P .. 'done:kept', 0, 0)[1]
  if not victim then return 0 end
  forget(victim)
end
return 1
"""
)
FORGET = COMMON + "\nforget(ARGV[2])\nreturn 1\n"  # ARGV: prefix, id
DEQUEUE = COMMON + "\ndequeue(ARGV[2])\nreturn 1\n"  # ARGV: prefix, id (a cancelled or finished queued job)
# Renew a lease: the queue entry's idle time starts again, only while the record says this replica's try holds
# the job (a replica that lost its lease must not take the entry back). ARGV: prefix, id, entry, consumer,
# replica, attempt.
RENEW = """
local P, id = ARGV[1], ARGV[2]
local raw = redis.call('GET', P .. 'job:' .. id)
if not raw then return 0 end
local record = cjson.decode(raw)
if record.replica ~= ARGV[5] or record.attempt ~= tonumber(ARGV[6]) then return 0 end
if record.status ~= 'queued' and record.status ~= 'running' then return 0 end
redis.call('XCLAIM', P .. 'queue', '@GROUP@', ARGV[4], 0, ARGV[3], 'JUSTID')
return 1
""".replace("@GROUP@", GROUP)
# The position of a queued job in the shared queue: entries not yet delivered to any replica ahead of its own.
# ARGV: prefix, id
POSITION = """
local P = ARGV[1]
local entry = redis.call('HGET', P .. 'entries', ARGV[2])
if not entry then return -1 end
local last = '0-0'
for _, group in ipairs(redis.pcall('XINFO', 'GROUPS', P .. 'queue')) do
  for i = 1, #group, 2 do
    if group[i] == 'name' and group[i + 1] ~= '@GROUP@' then break end
    if group[i] == 'last-delivered-id' then last = group[i + 1] end
  end
end
local ahead = redis.call('XRANGE', P .. 'queue', '(' .. last, '(' .. entry)
return #ahead
""".replace("@GROUP@", GROUP)
