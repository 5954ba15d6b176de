#!lua name=realtime_gateway
--
-- realtime-gateway's Redis functions. Every gateway loads this library at startup and after
-- every reconnect when the server has an older version (or none), so upgrading it while other
-- gateways run is safe: rtg_publish keeps its keys and arguments across versions.
--
-- Keys of one room share the hash tag {<tenant>/<room>}, so a room lives in one cluster slot.

local VERSION = 1

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

-- FCALL rtg_publish 2 <history stream key> <meta hash key> <channel> <envelope json> <max len> <ttl secs>
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

  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('XADD', stream, 'MAXLEN', maxlen, offset .. '-1', 'e', body)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, ttl)
  redis.call('PUBLISH', channel, offset .. '|' .. epoch .. '|' .. body)
  return { offset, epoch }
end

local function version()
  return VERSION
end

redis.register_function('rtg_publish', publish)
redis.register_function { function_name = 'rtg_version', callback = version, flags = { 'no-writes' } }
