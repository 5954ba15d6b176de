#!lua name=realtime_gateway
--
-- realtime-gateway's Redis functions. Every gateway loads this library at startup and after
-- every reconnect when the server has an older version (or none), so upgrading it while other
-- gateways run is safe: rtg_publish keeps its keys and arguments across versions.
--
-- Keys of one room share the hash tag {<tenant>/<room>}, so a room lives in one cluster slot.
--
-- On a Redis Cluster every caller passes 'shard' as the last argument of rtg_publish and
-- rtg_read: events then go out by sharded pub/sub (SPUBLISH, in the room's slot) and the
-- failover fence below runs.

local VERSION = 4

local function fail(msg)
  return redis.error_reply('ERR rtg_publish: ' .. msg)
end

-- The tenant part of a key "<prefix>:{<tenant>/<kind>:<id>}:h".
local function key_tenant(key)
  return string.match(key, '{([^/}]+)/[^}]+}')
end

local function as_id(v)
  if type(v) == 'number' and v == math.floor(v) then
    return string.format('%d', v)
  elseif type(v) == 'string' then
    return v
  end
  return nil
end

-- The room's epoch, created (with a fresh, empty history) when the room has none.
local function ensure_epoch(stream, meta, ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    redis.call('EXPIRE', meta, ttl)
  end
  return epoch
end

-- ===================================================================================
-- Tenant quotas and control state (fleet-wide limits; kept apart from the room functions).
--
-- Keys derived from the room keys' prefix (the part before ":{"), so direct FCALL callers of
-- rtg_publish on one Redis keep the 2-key form and are limited too:
--   <prefix>:quota:limits             hash  rate:<tenant> | rate:* -> events per second
--   <prefix>:quota:rate:{<tenant>}    hash  token bucket: tokens, ts (microseconds)
--   <prefix>:quota:conns:{<tenant>}   hash  <gateway id> -> connections, lease:<gateway id> -> lease end (ms)
-- rtg_publish reads the limits and the bucket without declaring them, which only a single Redis
-- allows: on a Redis Cluster (shard mode) the publisher takes from the bucket first with
-- rtg_rate_take, which declares its one key and is given the rate.
-- ===================================================================================

local function now_micros()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Takes `take` events from a token bucket of `rate` per second (bursts of one second's worth)
-- when it holds at least `need` (at most `rate`) of them. Returns nil when taken, else the
-- milliseconds until it would be.
local function bucket_take(bucket, rate, need, take)
  need = math.max(1, math.min(need, rate))
  local now = now_micros()
  local state = redis.call('HMGET', bucket, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or rate
  local ts = tonumber(state[2]) or now
  tokens = math.min(rate, tokens + math.max(0, now - ts) * rate / 1000000)
  local wait = nil
  if tokens < need then
    wait = math.max(1, math.ceil((need - tokens) * 1000 / rate))
  else
    tokens = tokens - take
  end
  redis.call('HSET', bucket, 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', now))
  -- A full bucket is the same as none: let idle tenants' buckets go.
  redis.call('PEXPIRE', bucket, 3000)
  return wait
end

-- Takes one event from the tenant's bucket. `need` is how many rooms the event still goes to
-- (this one included, at least 1): the first room of an event only passes when the bucket holds
-- the whole event, so a multi-room event is not cut in half at the limit. Returns nil when
-- allowed, else the milliseconds until it would be.
local function tenant_rate_take(stream, tenant, need)
  local prefix = string.match(stream, '^(.*):{')
  if prefix == nil then return nil end
  local limits = prefix .. ':quota:limits'
  local rate = tonumber(redis.call('HGET', limits, 'rate:' .. tenant) or redis.call('HGET', limits, 'rate:*'))
  if rate == nil or rate <= 0 then return nil end
  return bucket_take(prefix .. ':quota:rate:{' .. tenant .. '}', rate, need, 1)
end

-- FCALL rtg_rate_take 1 <prefix>:quota:rate:{<tenant>} <rate> <events>
-- Takes <events> (an event times its rooms) from the tenant's bucket of <rate> per second.
-- Returns 0 when taken, else the milliseconds to wait (nothing taken).
local function rate_take(keys, args)
  local bucket, rate, events = keys[1], tonumber(args[1]), tonumber(args[2])
  if bucket == nil or rate == nil or rate <= 0 or events == nil or events < 1 then
    return redis.error_reply('ERR rtg_rate_take: needs 1 key (bucket) and arguments rate > 0, events >= 1')
  end
  return bucket_take(bucket, rate, events, events) or 0
end

-- FCALL rtg_conn_admit 1 <prefix>:quota:conns:{<tenant>} <gateway id> <limit> <lease ms>
-- Counts one more connection of the tenant on this gateway if the fleet holds fewer than
-- <limit>, and extends this gateway's lease on the tenant's count by <lease ms>. Connections of
-- gateways whose lease ended no longer count. One key, so it runs on a Redis Cluster too.
-- Returns 1 or 0.
local function conn_admit(keys, args)
  local conns = keys[1]
  local me, limit, lease = args[1], tonumber(args[2]), tonumber(args[3])
  if conns == nil or me == nil or limit == nil or lease == nil then
    return redis.error_reply('ERR rtg_conn_admit: needs 1 key (conns) and arguments gateway id, limit, lease ms')
  end
  local now = math.floor(now_micros() / 1000)
  local all = redis.call('HGETALL', conns)
  local ends, counts = {}, {}
  for i = 1, #all, 2 do
    local gw = string.match(all[i], '^lease:(.*)$')
    if gw then ends[gw] = tonumber(all[i + 1]) else counts[all[i]] = tonumber(all[i + 1]) or 0 end
  end
  local total = 0
  for gw, n in pairs(counts) do
    if gw ~= me and (ends[gw] == nil or ends[gw] < now) then
      redis.call('HDEL', conns, gw, 'lease:' .. gw)
    else
      total = total + n
    end
  end
  if total >= limit then return 0 end
  redis.call('HINCRBY', conns, me, 1)
  redis.call('HSET', conns, 'lease:' .. me, string.format('%d', now + lease))
  redis.call('PEXPIRE', conns, lease * 4)
  return 1
end

-- FCALL rtg_revoke 1 <prefix>:revoked:<tenant>:<user> <before secs> <ttl secs>
-- Stores the later of the stored and the given revocation time; returns the stored one.
local function revoke(keys, args)
  local key, before, ttl = keys[1], tonumber(args[1]), tonumber(args[2])
  if key == nil or before == nil or ttl == nil or ttl < 1 then
    return redis.error_reply('ERR rtg_revoke: needs 1 key and arguments before, ttl')
  end
  local old = tonumber(redis.call('GET', key))
  if old ~= nil and old > before then before = old end
  redis.call('SET', key, string.format('%d', before), 'EX', ttl)
  return before
end

redis.register_function('rtg_conn_admit', conn_admit)
redis.register_function('rtg_rate_take', rate_take)
redis.register_function('rtg_revoke', revoke)

-- ===================================================================================

-- The failover fence (cluster mode). Replication is asynchronous: a replica promoted after its
-- primary died may lack the newest events of a room, whose offsets clients already hold. Each
-- write stamps the room with the replication id of the primary that made it ('rid'). A promoted
-- replica reports its old primary's id as master_replid2, so a room whose stamp equals it was
-- last written by the lost primary: its history may have lost a tail, and its next offsets
-- would reuse ones already delivered. Such a room starts a new epoch (clients get
-- recovered: false / resync) instead. A stamp from anywhere else (the room moved in with a slot
-- migration, which copies keys exactly) is simply renewed.
local function fence(stream, meta)
  local info = redis.call('INFO', 'replication')
  local rid = string.match(info, 'master_replid:(%x+)')
  local rid2 = string.match(info, 'master_replid2:(%x+)')
  local stamp = redis.call('HGET', meta, 'rid')
  if stamp and stamp ~= rid and stamp == rid2 then
    redis.call('DEL', stream, meta)
  end
  return rid, stamp
end

local function stamp(meta, rid, old)
  if rid and rid ~= old then
    redis.call('HSET', meta, 'rid', rid)
  end
end

-- FCALL rtg_publish 2 <history stream key> <meta hash key> <channel> <envelope json> <max len> <ttl secs> [<rooms left> | shard]
-- Appends the envelope to the room's history under the next offset, creates the room's epoch if
-- it has none (a new or lost history), publishes "<offset>|<epoch>|<envelope>" on the room's
-- channel, and returns { offset, epoch }.
local function publish(keys, args)
  local stream, meta = keys[1], keys[2]
  local channel, body = args[1], args[2]
  local maxlen, ttl = tonumber(args[3]), tonumber(args[4])
  if stream == nil or meta == nil then return fail('needs 2 keys: history stream, meta hash') end
  if channel == nil or body == nil then return fail('needs arguments: channel, envelope, max length, ttl') end
  if maxlen == nil or maxlen < 1 then return fail('max length (argument 3) must be a positive integer') end
  if ttl == nil or ttl < 1 then return fail('ttl (argument 4) must be a positive number of seconds') end
  local tenant = key_tenant(stream)
  if tenant == nil or key_tenant(meta) ~= tenant then
    return fail('keys must look like <prefix>:{<tenant>/<room>}:h and :m for the same room')
  end
  local ok, env = pcall(cjson.decode, body)
  if not ok or type(env) ~= 'table' then return fail('the envelope (argument 2) is not a JSON object') end
  for _, f in ipairs({ 'id', 'channel', 'event' }) do
    if type(env[f]) ~= 'string' or env[f] == '' then
      return fail('envelope.' .. f .. ' must be a non-empty string')
    end
  end
  if type(env.payload) ~= 'table' then return fail('envelope.payload must be a JSON object') end
  if type(env.timestamp) ~= 'number' then return fail('envelope.timestamp must be milliseconds since the epoch') end
  if as_id(env.institutionId) ~= tenant then
    return fail('envelope.institutionId must equal the tenant of the room key (' .. tenant .. ')')
  end

  local shard = args[5] == 'shard' or args[6] == 'shard'
  -- The tenant's publish rate: its keys are not declared, which only a single Redis allows, so a
  -- Redis Cluster (shard mode) publishes without a fleet-wide rate.
  if not shard then
    local wait_ms = tenant_rate_take(stream, tenant, tonumber(args[5]) or 1)
    if wait_ms then
      return fail('tenant_rate_limited retry_after_ms=' .. wait_ms .. ': tenant ' .. tenant ..
        ' is over its publish rate (events per second, all publishers); nothing was published')
    end
  end
  local rid, old
  if shard then rid, old = fence(stream, meta) end
  local epoch = ensure_epoch(stream, meta, ttl)
  if shard then stamp(meta, rid, old) end
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('XADD', stream, 'MAXLEN', maxlen, offset .. '-1', 'e', body)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, ttl)
  local frame = offset .. '|' .. epoch .. '|' .. body
  if shard then
    redis.call('SPUBLISH', channel, frame)
  else
    redis.call('PUBLISH', channel, frame)
  end
  return { offset, epoch }
end

-- FCALL rtg_read 2 <history stream key> <meta hash key> <epoch> <after offset> <max events> <ttl secs> [shard]
-- The room's position and, when <after offset> >= 0, the events after it:
--   { epoch, offset }                       position only (after < 0, or nothing missed)
--   { epoch, offset, 'ok', e1, e2, ... }    every missed envelope, in offset order
--   { epoch, offset, reason }               'epoch_changed' | 'future_offset' | 'too_many' | 'too_old'
-- A room without history gets an epoch here, so a client can hold a position before any event.
local function read(keys, args)
  local stream, meta = keys[1], keys[2]
  local want_epoch, after, max, ttl = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  if stream == nil or meta == nil then return redis.error_reply('ERR rtg_read: needs 2 keys: history stream, meta hash') end
  if want_epoch == nil or after == nil or max == nil or ttl == nil or ttl < 1 then
    return redis.error_reply('ERR rtg_read: needs arguments: epoch, after offset, max events, ttl')
  end
  local shard = args[5] == 'shard'
  local rid, old
  if shard then rid, old = fence(stream, meta) end
  local epoch = ensure_epoch(stream, meta, ttl)
  if shard then stamp(meta, rid, old) end
  local offset = tonumber(redis.call('HGET', meta, 'offset'))
  if after < 0 then return { epoch, offset } end
  if want_epoch ~= epoch then return { epoch, offset, 'epoch_changed' } end
  if after > offset then return { epoch, offset, 'future_offset' } end
  if after == offset then return { epoch, offset, 'ok' } end
  if offset - after > max then return { epoch, offset, 'too_many' } end
  local entries = redis.call('XRANGE', stream, (after + 1) .. '-1', '+', 'COUNT', offset - after)
  if #entries ~= offset - after or entries[1][1] ~= (after + 1) .. '-1' then
    return { epoch, offset, 'too_old' }
  end
  local out = { epoch, offset, 'ok' }
  for _, entry in ipairs(entries) do
    out[#out + 1] = entry[2][2]
  end
  return out
end

local function version()
  return VERSION
end

redis.register_function('rtg_publish', publish)
redis.register_function('rtg_read', read)
redis.register_function { function_name = 'rtg_version', callback = version, flags = { 'no-writes' } }
