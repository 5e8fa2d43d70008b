-- A tick's totals, computed once for the fleet: the first instance to ask closes the
-- windows, takes every site's counters (this tick's page views start again from zero)
-- and stores them under the tick's key; the others get what it stored. ARGV: seq, now
-- (the tick's start, ms), active window (ms), session timeout (ms), today's start (ms),
-- sites, history (ms). Returns {totals, visitors}: totals are a JSON array with, per
-- site, [active, duration ms, bounces, new, 5 device counts, views, [referrer, count,
-- ...], [path, count, ...]].
local key = P .. 'tick:' .. ARGV[1]
local done = redis.call('GET', key)
if done then
  return { done, redis.call('HLEN', P .. 'visitors') }
end
local now, window, timeout = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local today, sites, history = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]

-- Visitors whose window closed are no longer active.
local old = tonumber(redis.call('GET', P .. 'cutoff') or '0')
local cutoff = math.max(now - window, 0)
if cutoff > old then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'by_last', old, '(' .. int(cutoff))) do
    local v = load(id)
    if v and v.active == 1 then
      share(v, -1)
      v.active = 0
      save(id, v)
    end
  end
  redis.call('SET', P .. 'cutoff', int(cutoff))
end
-- Earlier days' visitors are forgotten once their session has ended.
local ended = int(math.min(today, now - timeout))
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'by_last', '-inf', '(' .. ended)) do
  forget(id)
end

local function list(flat)
  local items = {}
  for i = 1, #flat do
    items[i] = cjson.encode(flat[i])
  end
  return '[' .. table.concat(items, ',') .. ']'
end
local out = {}
for site = 0, sites - 1 do
  local k = P .. 'site:' .. site
  local counters = redis.call('HMGET', k, 'active', 'duration', 'bounces', 'new',
    'd0', 'd1', 'd2', 'd3', 'd4', 'views')
  for i = 1, #counters do
    counters[i] = counters[i] or '0'
  end
  out[#out + 1] = '[' .. table.concat(counters, ',') .. ',' .. list(redis.call('HGETALL', k .. ':refs'))
    .. ',' .. list(redis.call('HGETALL', k .. ':pages')) .. ']'
  redis.call('DEL', k .. ':pages')
  redis.call('HSET', k, 'views', 0)
end
local totals = '[' .. table.concat(out, ',') .. ']'
redis.call('SET', key, totals, 'PX', history)
redis.call('SET', P .. 'first', ARGV[1], 'NX')
return { totals, redis.call('HLEN', P .. 'visitors') }
