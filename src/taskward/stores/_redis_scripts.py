"""The Lua scripts of `RedisStore`.

Every script gets the same head: ``KEYS[1]`` is the ``idx:all`` key (it routes
the call to the prefix's slot on Cluster), ``KEYS[2]`` the ``finished`` zset,
``KEYS[3]`` the ``instances`` set, ``KEYS[4]`` the ``heartbeats`` hash; a
script's own keys follow from ``KEYS[5]``. ``ARGV[1..9]`` are the kind prefixes of
`Keys.script_layout`, which the scripts concatenate with ids they find
server-side (when trimming or reaping). Such keys are not declared in KEYS,
which Redis and Valkey allow on Cluster as long as they live in the slot of
the call: all keys share one hash tag, so they are in the slot of ``KEYS[1]``.

Index and set updates are queued in the script and sent once per key with all
their members (`defer`/`flush`), so a batch of records costs a few calls per
index instead of a few per record: roughly 15-30 us of server time per record
written (Redis 7.0 on a loaded 2-core box), most of it the sorted-set inserts.

Redirects: a record's ``rd`` field (JSON, see `taskward.stores.base`) is only
written here, never by a save. `enqueue` is the one place a delivery is made:
the save script calls it for a record that becomes terminal with a redirect,
the reaper for a task it marks lost, and ``SET_REDIRECT`` for a redirect set on
a task already terminal; each runs atomically, so whichever of "set" and
"ended" comes second enqueues, exactly once. The scripts that enqueue take the
delivery keys (queue, data, seq) after their own.

Record hashes use short field names (see `taskward.stores._redis_codec`):
``s`` status, ``o`` owner instance, ``u`` user, ``i`` item, ``ca``/``ua``/``fa``
created/updated/finished, ``e`` error, ``sr`` stop requested at.
"""

from __future__ import annotations

__all__ = [
    "CLAIM_DELIVERIES",
    "COUNTS",
    "END_DELIVERY",
    "HEARTBEAT",
    "INSTANCES",
    "QUERY",
    "REAP",
    "REQUEST_STOP",
    "RETIRE",
    "RETRY_DELIVERY",
    "RUNNING_BY_ITEM",
    "SAVE",
    "SET_REDIRECT",
]

_PRELUDE = """
local TASK, OUT, UIDX, IIDX, SIDX, INST, ALIVE, TASKS, STOPS = unpack(ARGV, 1, 9)
local ALL, FINISHED, INSTANCES, HEARTBEATS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local TERMINAL = {completed = true, failed = true, cancelled = true, lost = true}

-- Index and set updates are queued and sent once per key with all their members
-- (`flush`): a batch of records then costs a few calls per index, not per record.
local queued, queue, doomed = {}, {}, {}
local function defer(cmd, key, a, b)
  local name = cmd .. ' ' .. key
  local t = queued[name]
  if not t then
    t = {cmd, key}
    queued[name] = t
    queue[#queue + 1] = t
  end
  t[#t + 1] = a
  if b then t[#t + 1] = b end
end
local function flush()
  for _, t in ipairs(queue) do
    for j = 3, #t, 6000 do  -- unpack() is limited to ~8000 values; keep ZADD pairs whole
      redis.call(t[1], t[2], unpack(t, j, math.min(j + 5999, #t)))
    end
  end
  for j = 1, #doomed, 6000 do
    redis.call('DEL', unpack(doomed, j, math.min(j + 5999, #doomed)))
  end
  queued, queue, doomed = {}, {}, {}
end

-- A record just became terminal: leave the running structures, start retention.
local function finish(id, st, user, item, created, fin, owner, ttl)
  defer('ZREM', SIDX .. 'running', id)
  defer('ZADD', SIDX .. st, created, id)
  defer('SREM', INST .. owner .. TASKS, id)
  defer('SREM', INST .. owner .. STOPS, id)
  redis.call('PEXPIRE', TASK .. id, ttl)
  redis.call('PEXPIRE', OUT .. id, ttl)
  defer('ZADD', FINISHED, fin, id .. ' ' .. st .. ' ' .. user .. ' ' .. item)
end

-- A terminal record with the redirect `rdraw` (JSON): copy what to send into a new
-- delivery due at `at` (a string), and note it on the record. DQ, DD, DS: the queue,
-- its data hash and its id counter.
local function enqueue(id, rdraw, at, DQ, DD, DS)
  local tk = TASK .. id
  local rd = cjson.decode(rdraw)
  local h = redis.call('HMGET', tk, 's', 'n', 'r', 'e', 'fa', 'u', 'i')
  local t = redis.call('TIME')
  local did = 'dlv_' .. t[1] .. t[2] .. '_' .. redis.call('INCR', DS)
  local d = {id = did, t = id, c = rd.channel_id, p = rd.platform, mx = rd.max_chars, ea = at,
    a = 0, k = '', s = h[1], n = h[2], r = h[3], e = h[4], fa = h[5], u = h[6], i = h[7]}
  redis.call('HSET', DD, did, cjson.encode(d))
  redis.call('ZADD', DQ, at, did)
  rd.delivery_id, rd.state, rd.enqueued_at = did, 'pending', tonumber(at)
  redis.call('HSET', tk, 'rd', cjson.encode(rd))
end

-- Write a delivery's state on its record's redirect, if that still names it.
local function note_delivery(id, did, fields)
  local tk = TASK .. id
  local raw = redis.call('HGET', tk, 'rd')
  if not raw then return end
  local rd = cjson.decode(raw)
  if rd.delivery_id ~= did then return end
  for k, v in pairs(fields) do rd[k] = v end
  redis.call('HSET', tk, 'rd', cjson.encode(rd))
end

-- Retention let a finished record go: delete it, its output and index entries,
-- unless its id now names a newer record (a caller-chosen id reused after expiry),
-- which keeps them but for its old status's entry.
local function drop(member, score)
  defer('ZREM', FINISHED, member)
  local id, st, user, item = string.match(member, '^(%S+) (%S+) (%S*) (%S*)$')
  if not id then return end
  local cur = redis.call('HMGET', TASK .. id, 's', 'fa', 'ua')
  if cur[1] then
    local newer = not TERMINAL[cur[1]] or tonumber(cur[2] or cur[3]) ~= tonumber(score)
    if newer then
      if cur[1] ~= st then defer('ZREM', SIDX .. st, id) end
      return
    end
  end
  doomed[#doomed + 1] = TASK .. id
  doomed[#doomed + 1] = OUT .. id
  defer('ZREM', ALL, id)
  defer('ZREM', SIDX .. st, id)
  if user ~= '' then defer('ZREM', UIDX .. user, id) end
  if item ~= '' then defer('ZREM', IIDX .. item, id) end
end

-- Drop finished records older than the cutoff, then the oldest beyond max_finished;
-- at most `budget` of each per call, so one call never blocks the server for long.
-- Run by every write, read and heartbeat: while any instance lives, expired ids
-- leave the indexes within a heartbeat, writes or not.
local function trim(cutoff, maxf, budget)
  local old = redis.call('ZRANGE', FINISHED, '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, budget,
    'WITHSCORES')
  for j = 1, #old, 2 do drop(old[j], old[j + 1]) end
  flush()
  local excess = redis.call('ZCARD', FINISHED) - maxf
  if excess > 0 then
    if excess > budget then excess = budget end
    old = redis.call('ZRANGE', FINISHED, 0, excess - 1, 'WITHSCORES')
    for j = 1, #old, 2 do drop(old[j], old[j + 1]) end
    flush()
  end
end
"""

# KEYS[5..7] the delivery keys. ARGV after the head: ttl_ms, max_finished, cutoff, max_output,
# trim_budget, then the batch
# as JSON: [[record, ...], [[task_id, [seq, member, ...]], ...]] where a record is
# [id, status, user|'', item|'', owner, created, finish_score|'', [field, value, ...],
#  [field to delete, ...]] (see `encode_record`). One JSON argument is far cheaper for
# redis-py to send than thousands of small ones, and cjson decodes it in C. Then,
# optionally, a channel and a message to publish once the batch is written (the
# bus's events about it: whoever they wake reads the write, and the write and its
# notice are one call).
SAVE = (
    _PRELUDE
    + """
local ttl, maxf, cutoff = ARGV[10], tonumber(ARGV[11]), ARGV[12]
local maxout, budget = tonumber(ARGV[13]), tonumber(ARGV[14])
local batch = cjson.decode(ARGV[15])
local owners = {}
for _, r in ipairs(batch[1]) do
  local id, st, user, item = r[1], r[2], r[3], r[4]
  local owner, created, fin, dels = r[5], r[6], r[7], r[9]
  local tk = TASK .. id
  local cur = redis.call('HGET', tk, 's')
  if not (cur and TERMINAL[cur]) then
    if cur and #dels > 0 then redis.call('HDEL', tk, unpack(dels)) end
    redis.call('HSET', tk, unpack(r[8]))
    if not cur then  -- an update keeps the entries (and creation time) it already has
      defer('ZADD', ALL, created, id)
      if user ~= '' then defer('ZADD', UIDX .. user, created, id) end
      if item ~= '' then defer('ZADD', IIDX .. item, created, id) end
    end
    if st == 'running' then
      defer('ZADD', SIDX .. 'running', created, id)
      defer('SADD', INST .. owner .. TASKS, id)
      if not owners[owner] then
        owners[owner] = true
        defer('SADD', INSTANCES, owner)
      end
    else
      finish(id, st, user, item, created, fin, owner, ttl)
      if cur then
        local rd = redis.call('HGET', tk, 'rd')
        if rd then enqueue(id, rd, fin, KEYS[5], KEYS[6], KEYS[7]) end
      end
    end
  end
end
for _, group in ipairs(batch[2]) do
  local id = group[1]
  local pttl = redis.call('PTTL', TASK .. id)
  if pttl ~= -2 then
    local ok = OUT .. id
    redis.call('ZADD', ok, unpack(group[2]))
    redis.call('ZREMRANGEBYRANK', ok, 0, -(maxout + 1))
    if pttl > 0 then redis.call('PEXPIRE', ok, pttl) end
  end
end
flush()
trim(cutoff, maxf, budget)
if ARGV[17] then redis.call('PUBLISH', ARGV[16], ARGV[17]) end
return 0
"""
)

# KEYS[5..] candidate index keys (the smallest is read); ARGV after the head: max_finished,
# cutoff, trim_budget, after_score, after_id|'', limit, budget, then (field, value, index key)
# filters to check on each record. Returns {more (0/1), last_score, last_id, id, record, id,
# record, ...}; records are HGETALL arrays.
QUERY = (
    _PRELUDE
    + """
trim(ARGV[11], tonumber(ARGV[10]), tonumber(ARGV[12]))
local best, bestn = KEYS[5], nil
if #KEYS > 5 then
  for k = 5, #KEYS do
    local n = redis.call('ZCARD', KEYS[k])
    if bestn == nil or n < bestn then best, bestn = KEYS[k], n end
  end
end
local after_score, after = ARGV[13], ARGV[14]
local limit, budget = tonumber(ARGV[15]), tonumber(ARGV[16])
local own_field, own_value = nil, nil
local filters = {}
for j = 17, #ARGV, 3 do
  local f, v, key = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  filters[#filters + 1] = {f, v}
  if key == best then own_field, own_value = f, v end
end
local start = 0
if after ~= '' then
  local r = redis.call('ZREVRANK', best, after)
  if r then start = r + 1 else start = redis.call('ZCOUNT', best, after_score, '+inf') end
end
local out = {0, after_score, after}
local stale = {}
local found, scanned = 0, 0
while found < limit and scanned < budget do
  local want = limit - found
  if want < 32 then want = 32 end
  if want > budget - scanned then want = budget - scanned end
  local rows = redis.call('ZRANGE', best, start, start + want - 1, 'REV', 'WITHSCORES')
  start = start + want
  local n = #rows / 2
  for j = 1, #rows, 2 do
    local id = rows[j]
    scanned = scanned + 1
    out[2], out[3] = rows[j + 1], id
    local h = redis.call('HGETALL', TASK .. id)
    if #h == 0 then
      stale[#stale + 1] = id
    else
      local rec = {}
      for k = 1, #h, 2 do rec[h[k]] = h[k + 1] end
      local ok = true
      for _, f in ipairs(filters) do
        if rec[f[1]] ~= f[2] then ok = false end
      end
      if own_field and rec[own_field] ~= own_value then stale[#stale + 1] = id end
      if ok then
        found = found + 1
        out[#out + 1] = id
        out[#out + 1] = h
        if found >= limit then
          if j + 1 < #rows or n == want then out[1] = 1 end
          break
        end
      end
    end
  end
  if n < want then break end
  if found < limit and scanned >= budget then out[1] = 1 end
end
for j = 1, #stale, 500 do
  redis.call('ZREM', best, unpack(stale, j, math.min(j + 499, #stale)))
end
return out
"""
)

# KEYS[5] item index, KEYS[6] running index; ARGV after the head: item_id.
RUNNING_BY_ITEM = (
    _PRELUDE
    + """
local out = {}
for _, id in ipairs(redis.call('ZINTER', 2, KEYS[5], KEYS[6], 'WEIGHTS', 1, 0)) do
  local h = redis.call('HMGET', TASK .. id, 's', 'i')
  if h[1] == 'running' and h[2] == ARGV[10] then out[#out + 1] = id end
end
return out
"""
)

# ARGV after the head: task_id, at, user ('' for any). Returns the record (HGETALL;
# empty if unknown or, with a user, another user's: the two look alike).
REQUEST_STOP = (
    _PRELUDE
    + """
local id = ARGV[10]
local tk = TASK .. id
local h = redis.call('HMGET', tk, 's', 'sr', 'o', 'u')
if ARGV[12] ~= '' and h[4] ~= ARGV[12] then return {} end
if h[1] == 'running' and not h[2] then
  redis.call('HSET', tk, 'sr', ARGV[11])
  redis.call('SADD', INST .. (h[3] or '') .. STOPS, id)
end
return redis.call('HGETALL', tk)
"""
)

# KEYS[5] the reaper lock, KEYS[6..8] the delivery keys; ARGV after the head: token, lock_ms, now, ttl_ms, max_finished,
# cutoff, budget. Returns {'locked'} or {'done'|'more', id, record, id, record, ...}.
REAP = (
    _PRELUDE
    + """
local token, lock_ms, now, ttl = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local maxf, cutoff, budget = tonumber(ARGV[14]), ARGV[15], tonumber(ARGV[16])
local holder = redis.call('GET', KEYS[5])
if holder and holder ~= token then return {'locked'} end
redis.call('SET', KEYS[5], token, 'PX', lock_ms)
local out = {'done'}
local done = 0
for _, iid in ipairs(redis.call('SMEMBERS', INSTANCES)) do
  if redis.call('EXISTS', INST .. iid .. ALIVE) == 0 then
    local tasks = INST .. iid .. TASKS
    for _, id in ipairs(redis.call('SRANDMEMBER', tasks, budget - done)) do
      local tk = TASK .. id
      local h = redis.call('HMGET', tk, 's', 'u', 'i', 'ca', 'rd')
      if h[1] == 'running' then
        local msg = "task '" .. id .. "' was lost with its instance '" .. iid .. "'"
        redis.call('HSET', tk, 's', 'lost', 'fa', now, 'ua', now,
          'e', cjson.encode({'TaskLost', msg}))
        finish(id, 'lost', h[2] or '', h[3] or '', h[4] or now, now, iid, ttl)
        if h[5] then enqueue(id, h[5], now, KEYS[6], KEYS[7], KEYS[8]) end
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGETALL', tk)
      else
        redis.call('SREM', tasks, id)
      end
      done = done + 1
    end
    flush()
    if redis.call('SCARD', tasks) == 0 then
      redis.call('DEL', tasks, INST .. iid .. STOPS)
      redis.call('SREM', INSTANCES, iid)
      redis.call('HDEL', HEARTBEATS, iid)
    end
    if done >= budget then
      out[1] = 'more'
      break
    end
  end
end
flush()
trim(cutoff, maxf, budget)
if out[1] == 'done' then redis.call('DEL', KEYS[5]) end
return out
"""
)

# ARGV after the head: instance_id.
RETIRE = (
    _PRELUDE
    + """
local iid = ARGV[10]
redis.call('DEL', INST .. iid .. ALIVE)
if redis.call('SCARD', INST .. iid .. TASKS) == 0 then
  redis.call('DEL', INST .. iid .. TASKS, INST .. iid .. STOPS)
  redis.call('SREM', INSTANCES, iid)
  redis.call('HDEL', HEARTBEATS, iid)
end
return 0
"""
)

# ARGV after the head: instance_id, ttl_ms, now, max_finished, cutoff, trim_budget. Sets the
# liveness key and returns 1 if it was still set, 0 if it had lapsed (or the server lost
# its data). One script, not a pipeline: resent after a NOSCRIPT, it has not run before.
HEARTBEAT = (
    _PRELUDE
    + """
local iid = ARGV[10]
local was = redis.call('SET', INST .. iid .. ALIVE, '1', 'PX', ARGV[11], 'GET')
redis.call('SADD', INSTANCES, iid)
redis.call('HSET', HEARTBEATS, iid, ARGV[12])
trim(ARGV[14], tonumber(ARGV[13]), tonumber(ARGV[15]))
if was then return 1 end
return 0
"""
)

# No ARGV after the head. Returns {id, alive (0/1), running, last heartbeat|'', ...} for
# every instance that heartbeats or owns running tasks, by id.
INSTANCES = (
    _PRELUDE
    + """
local seen = {}
for _, iid in ipairs(redis.call('SMEMBERS', INSTANCES)) do seen[iid] = true end
for _, iid in ipairs(redis.call('HKEYS', HEARTBEATS)) do seen[iid] = true end
local ids = {}
for iid in pairs(seen) do ids[#ids + 1] = iid end
table.sort(ids)
local out = {}
for _, iid in ipairs(ids) do
  out[#out + 1] = iid
  out[#out + 1] = redis.call('EXISTS', INST .. iid .. ALIVE)
  out[#out + 1] = redis.call('SCARD', INST .. iid .. TASKS)
  out[#out + 1] = redis.call('HGET', HEARTBEATS, iid) or ''
end
return out
"""
)

# ARGV after the head: max_finished, cutoff, trim_budget, then status values. Trims, then
# returns the size of each status's index, in the order given.
COUNTS = (
    _PRELUDE
    + """
trim(ARGV[11], tonumber(ARGV[10]), tonumber(ARGV[12]))
local out = {}
for j = 13, #ARGV do out[#out + 1] = redis.call('ZCARD', SIDX .. ARGV[j]) end
return out
"""
)

# KEYS[5..7] the delivery keys; ARGV after the head: task_id, user ('' for any), the
# redirect (JSON), at. Returns the record (HGETALL; empty if unknown or another user's).
SET_REDIRECT = (
    _PRELUDE
    + """
local id, user, target, at = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local tk = TASK .. id
local h = redis.call('HMGET', tk, 's', 'u', 'rd')
if not h[1] or (user ~= '' and h[2] ~= user) then return {} end
if TERMINAL[h[1]] then
  if h[3] then
    local old, new = cjson.decode(h[3]), cjson.decode(target)
    if old.delivery_id ~= cjson.null and old.channel_id == new.channel_id and old.platform == new.platform
        and old.max_chars == new.max_chars then
      return redis.call('HGETALL', tk)
    end
  end
  enqueue(id, target, at, KEYS[5], KEYS[6], KEYS[7])
else
  redis.call('HSET', tk, 'rd', target)
end
return redis.call('HGETALL', tk)
"""
)

# KEYS[5..6] the delivery queue and data; ARGV after the head: now, lease end, limit, token.
# Returns the claimed deliveries' JSON, oldest due first.
CLAIM_DELIVERIES = (
    _PRELUDE
    + """
local out = {}
for _, did in ipairs(redis.call('ZRANGE', KEYS[5], '-inf', ARGV[10], 'BYSCORE', 'LIMIT', 0,
    ARGV[12])) do
  local raw = redis.call('HGET', KEYS[6], did)
  if raw then
    local d = cjson.decode(raw)
    d.a, d.k = d.a + 1, ARGV[13]
    raw = cjson.encode(d)
    redis.call('HSET', KEYS[6], did, raw)
    redis.call('ZADD', KEYS[5], ARGV[11], did)
    note_delivery(d.t, did, {attempts = d.a})
    out[#out + 1] = raw
  else
    redis.call('ZREM', KEYS[5], did)
  end
end
return out
"""
)

# KEYS[5..6] the delivery queue and data; ARGV after the head: delivery id, token, due, error.
# Returns 1, or 0 for a stale claim.
RETRY_DELIVERY = (
    _PRELUDE
    + """
local raw = redis.call('HGET', KEYS[6], ARGV[10])
if not raw then return 0 end
local d = cjson.decode(raw)
if d.k ~= ARGV[11] then return 0 end
d.k = ''
redis.call('HSET', KEYS[6], ARGV[10], cjson.encode(d))
redis.call('ZADD', KEYS[5], ARGV[12], ARGV[10])
note_delivery(d.t, ARGV[10], {last_error = ARGV[13]})
return 1
"""
)

# KEYS[5..6] the delivery queue and data; ARGV after the head: delivery id, token, state
# ('delivered' or 'failed'), at, error ('' for none). Returns 1, or 0 for a stale claim.
END_DELIVERY = (
    _PRELUDE
    + """
local raw = redis.call('HGET', KEYS[6], ARGV[10])
if not raw then return 0 end
local d = cjson.decode(raw)
if d.k ~= ARGV[11] then return 0 end
redis.call('ZREM', KEYS[5], ARGV[10])
redis.call('HDEL', KEYS[6], ARGV[10])
local fields = {state = ARGV[12], done_at = tonumber(ARGV[13])}
if ARGV[14] ~= '' then fields.last_error = ARGV[14] end
note_delivery(d.t, ARGV[10], fields)
return 1
"""
)
