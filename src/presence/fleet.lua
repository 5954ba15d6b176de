#!lua name=realtime_gateway_fleet
--
-- realtime-gateway's fleet functions: presence per room, gateway leases, and the lifecycle
-- stream. Loaded beside the `realtime_gateway` library (bus/redis/function.lua) by every gateway
-- that runs on Redis.
--
-- Every function works on the keys of one cluster slot: a room's presence and history keys share
-- the room's hash tag {<tenant>/<room>}; a tenant's lifecycle keys share {<tenant>}; the lease
-- registry is one key. What spans slots (walking a lost gateway's rooms) is done by the caller,
-- one atomic call per room or tenant, each of which does nothing the second time. That is what
-- makes "notice a lost gateway and emit its leaves" happen once however many gateways notice.
--
-- A gateway writes under an incarnation id and the lease deadline its last renewal returned;
-- a write past that deadline (Redis time) is refused, so nothing is ever
-- written for an incarnation that others may already be reaping.

local VERSION = 1

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function lapsed(deadline)
  return tonumber(deadline) == nil or now_ms() > tonumber(deadline)
end

-- Appends an event to a room's history and publishes it, in exactly the format of rtg_publish
-- (bus/redis/function.lua): stream entry `<offset>-1` with field `e`, channel message
-- `<offset>|<epoch>|<envelope>`, the epoch created when the room has none.
local function append(stream, meta, channel, envelope, maxlen, ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  local body = cjson.encode(envelope)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('XADD', stream, 'MAXLEN', maxlen, offset .. '-1', 'e', body)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, ttl)
  redis.call('PUBLISH', channel, offset .. '|' .. epoch .. '|' .. body)
  return offset
end

-- `presence_join` / `presence_leave` for one user, as an ordinary room event.
-- ev = { channel, maxlen, ttl, tenant, room, id }
local function emit(keys, ev, name, user, role)
  local envelope = {
    id = ev.id .. '-' .. user,
    channel = name,
    event = name,
    institutionId = ev.tenant,
    payload = { room = ev.room, userId = user, role = role },
    timestamp = now_ms(),
  }
  append(keys[3], keys[4], ev.channel, envelope, ev.maxlen, ev.ttl)
end

-- The user's fleet-wide entry "<connections>|<role>" in the room's member hash.
local function member(pu, user)
  local v = redis.call('HGET', pu, user)
  if not v then return 0, nil end
  local n, role = string.match(v, '^(%d+)|(.*)$')
  return tonumber(n), role
end

-- Reads the event arguments shared by set and reap, starting at args[i].
local function event_args(args, i)
  return {
    emit = args[i] == '1',
    channel = args[i + 1],
    maxlen = tonumber(args[i + 2]),
    ttl = tonumber(args[i + 3]),
    tenant = args[i + 4],
    room = args[i + 5],
    id = args[i + 6],
  }
end

-- FCALL rtg_presence_set 4 <members hash> <gateway hash> <history stream> <meta hash>
--   <deadline ms> <user> <role> <connections on this gateway>
--   <emit 0|1> <channel> <max len> <ttl secs> <tenant> <room> <event id prefix>
-- Sets how many connections this gateway holds for the user in the room, adjusts the user's
-- fleet-wide count, and emits presence_join when the count leaves 0 or presence_leave when it
-- reaches 0 (if asked to). Returns { 1 join | 2 leave | 0, entries this gateway has left }, or
-- { -1, 0 } without writing when the lease has lapsed.
local function presence_set(keys, args)
  local pu, pg = keys[1], keys[2]
  local deadline, user, role, n = args[1], args[2], args[3], tonumber(args[4])
  if pu == nil or pg == nil or keys[3] == nil or keys[4] == nil then
    return redis.error_reply('ERR rtg_presence_set: needs 4 keys: members, gateway, history, meta')
  end
  if user == nil or role == nil or n == nil or n < 0 then
    return redis.error_reply('ERR rtg_presence_set: needs deadline, user, role, connections >= 0')
  end
  if lapsed(deadline) then return { -1, 0 } end
  local ev = event_args(args, 5)
  local old = tonumber(redis.call('HGET', pg, user) or '0')
  if n > 0 then redis.call('HSET', pg, user, n) else redis.call('HDEL', pg, user) end
  local total, stored_role = member(pu, user)
  local after = total - old + n
  local change = 0
  if after > 0 then
    -- A gateway that drops to 0 connections knows no role: keep the one stored.
    if n == 0 and stored_role then role = stored_role end
    redis.call('HSET', pu, user, after .. '|' .. role)
    if total == 0 then change = 1 end
  else
    redis.call('HDEL', pu, user)
    if total > 0 then change = 2 end
  end
  if ev.emit and change == 1 then emit(keys, ev, 'presence_join', user, role) end
  if ev.emit and change == 2 then emit(keys, ev, 'presence_leave', user, stored_role or role) end
  return { change, redis.call('HLEN', pg) }
end

-- FCALL rtg_presence_reap 4 <members hash> <lost gateway's hash> <history stream> <meta hash>
--   <emit 0|1> <channel> <max len> <ttl secs> <tenant> <room> <event id prefix>
-- Removes every entry of a lost gateway from the room and emits presence_leave for each user
-- that had no other connection. The second call finds nothing left: it returns 0 and emits
-- nothing. Returns how many users left.
local function presence_reap(keys, args)
  local pu, pg = keys[1], keys[2]
  if pu == nil or pg == nil or keys[3] == nil or keys[4] == nil then
    return redis.error_reply('ERR rtg_presence_reap: needs 4 keys: members, gateway, history, meta')
  end
  local ev = event_args(args, 1)
  local entries = redis.call('HGETALL', pg)
  local left = 0
  for i = 1, #entries, 2 do
    local user, n = entries[i], tonumber(entries[i + 1])
    local total, role = member(pu, user)
    local after = total - n
    if after > 0 then
      redis.call('HSET', pu, user, after .. '|' .. role)
    elseif total > 0 then
      redis.call('HDEL', pu, user)
      left = left + 1
      if ev.emit then emit(keys, ev, 'presence_leave', user, role) end
    end
  end
  redis.call('DEL', pg)
  return left
end

-- FCALL_RO rtg_presence_read 1 <members hash> <max members>
-- { count } when the room has more than <max members> members, else
-- { count, user1, "<connections>|<role>", user2, ... }.
local function presence_read(keys, args)
  local max = tonumber(args[1])
  if keys[1] == nil or max == nil then
    return redis.error_reply('ERR rtg_presence_read: needs 1 key and the most members to list')
  end
  local count = redis.call('HLEN', keys[1])
  if count > max then return { count } end
  local out = { count }
  local entries = redis.call('HGETALL', keys[1])
  for i = 1, #entries do out[#out + 1] = entries[i] end
  return out
end

-- FCALL rtg_lease_renew 1 <registry zset> <incarnation> <lease ms> <first 0|1>
-- Extends the incarnation's lease and returns the new deadline (Redis time, ms); -1 if the
-- lease had lapsed (or is unknown and this is not the first renewal): the incarnation is dead,
-- the gateway must take a new one and assert its members again.
local function lease_renew(keys, args)
  local registry, inc, lease, first = keys[1], args[1], tonumber(args[2]), args[3] == '1'
  if registry == nil or inc == nil or lease == nil or lease < 1 then
    return redis.error_reply('ERR rtg_lease_renew: needs the registry key, incarnation, lease ms')
  end
  local now = now_ms()
  if not first then
    local score = tonumber(redis.call('ZSCORE', registry, inc))
    if score == nil or score < now then return -1 end
  end
  redis.call('ZADD', registry, now + lease, inc)
  return now + lease
end

-- FCALL_RO rtg_lease_expired 1 <registry zset>: incarnations whose lease has run out.
local function lease_expired(keys, args)
  return redis.call('ZRANGEBYSCORE', keys[1], '-inf', '(' .. now_ms())
end

-- FCALL rtg_lease_forget 1 <registry zset> <incarnation>
-- Drops an expired incarnation once its entries were reaped; 1 if this call dropped it.
local function lease_forget(keys, args)
  local score = tonumber(redis.call('ZSCORE', keys[1], args[1]))
  if score ~= nil and score < now_ms() then
    return redis.call('ZREM', keys[1], args[1])
  end
  return 0
end

-- FCALL rtg_lifecycle 2 <tenant stream> <tenant connections hash of this incarnation>
--   <deadline ms> <max len> <open|close|none> <socket id> <registered value> <field> <value> ...
-- Appends one entry to the tenant's lifecycle stream. `open` also records the connection
-- under this incarnation (what a lost gateway's `gateway_lost` entries are written from),
-- `close` forgets it. Returns the entry id, or 0 without writing for an `open` past the lease
-- deadline (the gateway asserts its connections again under a new incarnation).
local function lifecycle(keys, args)
  local stream, conns = keys[1], keys[2]
  local deadline, maxlen, op, socket, value = args[1], tonumber(args[2]), args[3], args[4], args[5]
  if stream == nil or conns == nil or maxlen == nil or socket == nil or value == nil then
    return redis.error_reply('ERR rtg_lifecycle: needs 2 keys and deadline, max len, op, socket, value, fields')
  end
  if op == 'open' and lapsed(deadline) then return 0 end
  local fields = {}
  for i = 6, #args do fields[#fields + 1] = args[i] end
  local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  if op == 'open' then
    redis.call('HSET', conns, socket, value)
  elseif op == 'close' then
    redis.call('HDEL', conns, socket)
  end
  return id
end

-- FCALL rtg_lifecycle_lost 2 <tenant stream> <lost incarnation's connections hash>
--   <incarnation> <max len>
-- Writes one `disconnect` entry with reason `gateway_lost` for every connection the lost
-- incarnation still held in the tenant, then forgets them: a second call writes nothing.
-- Returns how many entries it wrote.
local function lifecycle_lost(keys, args)
  local stream, conns, inc, maxlen = keys[1], keys[2], args[1], tonumber(args[2])
  if stream == nil or conns == nil or inc == nil or maxlen == nil then
    return redis.error_reply('ERR rtg_lifecycle_lost: needs 2 keys, incarnation, max len')
  end
  local entries = redis.call('HGETALL', conns)
  local ts = tostring(now_ms())
  for i = 1, #entries, 2 do
    local user, transport = string.match(entries[i + 1], '^([^|]*)|(.*)$')
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
      'type', 'disconnect', 'userId', user or '', 'socketId', entries[i], 'gateway', inc,
      'reason', 'gateway_lost', 'transport', transport or '', 'timestamp', ts)
  end
  redis.call('DEL', conns)
  return #entries / 2
end

-- FCALL rtg_lease_release 1 <registry zset> <incarnation>
-- Drops this gateway's own incarnation on a graceful exit; 1 if it was there.
local function lease_release(keys, args)
  return redis.call('ZREM', keys[1], args[1])
end

local function version()
  return VERSION
end

redis.register_function('rtg_presence_set', presence_set)
redis.register_function('rtg_presence_reap', presence_reap)
redis.register_function { function_name = 'rtg_presence_read', callback = presence_read, flags = { 'no-writes' } }
redis.register_function('rtg_lease_renew', lease_renew)
redis.register_function { function_name = 'rtg_lease_expired', callback = lease_expired, flags = { 'no-writes' } }
redis.register_function('rtg_lease_forget', lease_forget)
redis.register_function('rtg_lease_release', lease_release)
redis.register_function('rtg_lifecycle', lifecycle)
redis.register_function('rtg_lifecycle_lost', lifecycle_lost)
redis.register_function { function_name = 'rtg_fleet_version', callback = version, flags = { 'no-writes' } }
