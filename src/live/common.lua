-- What both scripts share: a visitor's record, and its share of its site's counters.
-- Keys: rab:visitors (id -> record), rab:by_last (id by last event), rab:cutoff (events
-- before it are outside the active window), rab:site:N (counters), rab:site:N:refs
-- (active sessions by referrer), rab:site:N:pages (this tick's views by path),
-- rab:tick:SEQ (a tick's totals), rab:first (the first tick with totals), rab:call:ID
-- (the number of the last record.lua call connection ID ran), rab:event:ID (an event
-- held and sent again).
local P = 'rab:'
local MAX_LABELS = 1000

-- Integers as Redis takes them: Lua's tostring would print 1.765e+12, and -1 * 0 as -0
-- (adding 0 makes it 0).
local function int(x)
  return string.format('%.0f', x + 0)
end

local function load(id)
  local raw = redis.call('HGET', P .. 'visitors', id)
  if not raw then
    return nil
  end
  local site, device, first, active, views, start, last, ref =
    string.match(raw, '^(%d+),(%d),(%d),(%d),(%d+),(%d+),(%d+),(.*)$')
  return {
    site = site, device = device, first = tonumber(first), active = tonumber(active),
    views = tonumber(views), start = tonumber(start), last = tonumber(last), ref = ref,
  }
end

local function save(id, v)
  redis.call('HSET', P .. 'visitors', id, table.concat({
    v.site, v.device, v.first, v.active, int(v.views), int(v.start), int(v.last), v.ref,
  }, ','))
end

-- An active visitor's share of its site's counters: added (sign 1) or taken back (-1).
local function share(v, sign)
  local site = P .. 'site:' .. v.site
  redis.call('HINCRBY', site, 'active', sign)
  redis.call('HINCRBY', site, 'duration', int(sign * (v.last - v.start)))
  if v.views == 1 then
    redis.call('HINCRBY', site, 'bounces', sign)
  end
  if v.first == 1 then
    redis.call('HINCRBY', site, 'new', sign)
  end
  redis.call('HINCRBY', site, 'd' .. v.device, sign)
  if v.ref ~= '' then
    local refs = site .. ':refs'
    if redis.call('HINCRBY', refs, v.ref, sign) <= 0 then
      redis.call('HDEL', refs, v.ref)
    end
  end
end

-- Forgets a visitor, taking back its share if it is active.
local function forget(id)
  local v = load(id)
  if v and v.active == 1 then
    share(v, -1)
  end
  redis.call('HDEL', P .. 'visitors', id)
  redis.call('ZREM', P .. 'by_last', id)
end
