-- Records one event for each site and visitor it names (live mode's State::touch, on
-- the fleet's state). ARGV: now (ms), session timeout (ms), visitors at most, kind (p:
-- page view, e: engagement, c: custom), device (0-4, or -1 when the event names no
-- screen width), path, referrer ('' for none); how long a call's and an event's marks
-- are kept (ms), the event's id, 'first' or 'again', the first send's connection and
-- call number ('' and 0 if unknown); site and visitor id pairs; last, this call's
-- connection and number. Returns {1 when counted for some site (or by an earlier send),
-- visitors evicted}.
local now, timeout, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local kind, device, path, referrer = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local call_ttl, event_ttl, event, send = ARGV[8], ARGV[9], P .. 'event:' .. ARGV[10], ARGV[11]
local first_call, first_number = ARGV[12], tonumber(ARGV[13])
-- This call ran: a send again of its event will know.
redis.call('SET', P .. 'call:' .. ARGV[#ARGV - 1], ARGV[#ARGV], 'PX', call_ttl)
if redis.call('EXISTS', event) == 1 then
  return { 1, 0 }
end
if send == 'again' then
  local ran = tonumber(redis.call('GET', P .. 'call:' .. first_call) or '0')
  if first_call ~= '' and ran >= first_number then
    return { 1, 0 }
  end
  -- A first send still on its way finds it counted.
  redis.call('SET', event, 1, 'PX', event_ttl)
end
-- An event is never older than the window's closed part.
now = math.max(now, tonumber(redis.call('GET', P .. 'cutoff') or '0'))
local counted, evicted = 0, 0
for i = 14, #ARGV - 2, 2 do
  local site, id = ARGV[i], ARGV[i + 1]
  local v = load(id)
  -- An engagement extends an open session, and never starts one.
  if kind ~= 'e' or (v and now - v.last <= timeout) then
    if not v then
      if redis.call('HLEN', P .. 'visitors') >= max then
        local idle = redis.call('ZRANGE', P .. 'by_last', 0, 0)[1]
        if idle then
          forget(idle)
          evicted = evicted + 1
        end
      end
      v = {
        site = site, device = (device == '-1') and '4' or device, first = 1, active = 0,
        views = 0, start = now, last = now, ref = '',
      }
    end
    if v.active == 1 then
      share(v, -1)
    end
    if now - v.last > timeout then
      v.first, v.views, v.start, v.ref = 0, 0, now, ''
    end
    local site_key = P .. 'site:' .. site
    if v.views == 0 and v.start == now then
      v.ref = referrer
      local refs = site_key .. ':refs'
      if referrer ~= '' and redis.call('HEXISTS', refs, referrer) == 0
          and redis.call('HLEN', refs) >= MAX_LABELS then
        v.ref = 'other'
      end
    end
    v.last = math.max(now, v.last)
    if device ~= '-1' then
      v.device = device
    end
    if kind == 'p' then
      v.views = v.views + 1
      redis.call('HINCRBY', site_key, 'views', 1)
      local pages = site_key .. ':pages'
      local page = path
      if redis.call('HEXISTS', pages, path) == 0 and redis.call('HLEN', pages) >= MAX_LABELS then
        page = 'other'
      end
      redis.call('HINCRBY', pages, page, 1)
    end
    v.active = 1
    share(v, 1)
    redis.call('ZADD', P .. 'by_last', int(v.last), id)
    save(id, v)
    counted = 1
  end
end
return { counted, evicted }
