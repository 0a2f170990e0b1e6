#!lua
local fence = KEYS[1]
local epoch = tonumber(ARGV[1])
local first_offset = tonumber(ARGV[2])
local next_offset = tonumber(ARGV[3])
local stored = redis.call('HMGET', fence, 'epoch', 'next_offset')
local stored_epoch = tonumber(stored[1])
local stored_next = tonumber(stored[2])
if stored_epoch and stored_epoch > epoch then
  return {2, stored[1], stored[2], 1, 0, false}
end
if stored_next then
  if stored_next >= next_offset then
    return {1, stored[1], stored[2], 1, 0, false}
  end
  if stored_next > first_offset then
    return {3, stored[1], stored[2], 1, 0, false}
  end
end

local message_ttl = ARGV[4]
local user_at_arg = ARGV[5]
local template_ttl = ARGV[7]
local commands = 1
local write_errors = 0
local first_error = false

local function failed(reply)
  if type(reply) == 'table' and reply.err then
    write_errors = write_errors + 1
    if not first_error then first_error = reply.err end
    return true
  end
  return false
end

-- The batch's end of day is computed when it is built. If applying it was delayed past that
-- midnight (Redis down over midnight), use the next one: PEXPIREAT in the past deletes the key.
local user_at = nil
local function user_expire_at()
  if user_at == nil then
    local t = redis.call('TIME')
    commands = commands + 1
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    user_at = tonumber(user_at_arg)
    if user_at <= now then
      user_at_arg = ARGV[6]
      user_at = tonumber(user_at_arg)
    end
    if user_at <= now then
      user_at = now + 86400000
      user_at_arg = tostring(user_at)
    end
  end
  return user_at
end

-- One TTL command per list, after its pushes: message lists live 3 days after their latest
-- event; a user list created by this batch (length == values pushed) gets tonight's midnight,
-- an existing one to check only if its expiry differs (a list written by someone else), an
-- existing one known to expire tonight nothing.
local function expire_message(key)
  failed(redis.pcall('PEXPIRE', key, message_ttl))
  commands = commands + 1
end

local function expire_user(key, len, n, check)
  if len == n then
    user_expire_at()
    failed(redis.pcall('PEXPIREAT', key, user_at_arg))
    commands = commands + 1
  elseif check then
    local at = user_expire_at()
    local current = redis.call('PEXPIRETIME', key)
    commands = commands + 1
    if current ~= at then
      failed(redis.pcall('PEXPIREAT', key, user_at_arg))
      commands = commands + 1
    end
  end
end

local k = 2
local a = 15

-- kind: 'message', 'check' (a user list whose expiry may be foreign) or 'trusted' (a user list
-- known to expire tonight).
local function expire(kind, key, len, n)
  if kind == 'message' then expire_message(key) else expire_user(key, len, n, kind == 'check') end
end

local function push_multi(count, kind)
  for _ = 1, count do
    local key = KEYS[k]
    k = k + 1
    local n = tonumber(ARGV[a])
    a = a + 1
    local last = a + n - 1
    local len = nil
    local ok = true
    while a <= last do
      -- at most 4000 values per LPUSH: Lua 5.1's unpack fails beyond ~8000 (LUAI_MAXCSTACK)
      local chunk_end = a + 3999
      if chunk_end > last then chunk_end = last end
      local reply = redis.pcall('LPUSH', key, unpack(ARGV, a, chunk_end))
      commands = commands + 1
      if failed(reply) then ok = false else len = reply end
      a = chunk_end + 1
    end
    if ok then expire(kind, key, len, n) end
  end
end

local function push_single(count, kind)
  for _ = 1, count do
    local key = KEYS[k]
    k = k + 1
    local reply = redis.pcall('LPUSH', key, ARGV[a])
    a = a + 1
    commands = commands + 1
    if not failed(reply) then expire(kind, key, reply, 1) end
  end
end

push_multi(tonumber(ARGV[8]), 'message')
push_single(tonumber(ARGV[9]), 'message')
push_multi(tonumber(ARGV[10]), 'check')
push_single(tonumber(ARGV[11]), 'check')
push_multi(tonumber(ARGV[12]), 'trusted')
push_single(tonumber(ARGV[13]), 'trusted')

for _ = 1, tonumber(ARGV[14]) do
  local key = KEYS[k]
  k = k + 1
  local n = tonumber(ARGV[a])
  a = a + 1
  local any = false
  for _ = 1, n do
    local reply = redis.pcall('HINCRBY', key, ARGV[a], ARGV[a + 1])
    commands = commands + 1
    if not failed(reply) then any = true end
    a = a + 2
  end
  if any then
    failed(redis.pcall('PEXPIRE', key, template_ttl))
    commands = commands + 1
  end
end

redis.call('HSET', fence, 'epoch', ARGV[1], 'next_offset', ARGV[3])
commands = commands + 1
return {0, stored[1], stored[2], commands, write_errors, first_error}
