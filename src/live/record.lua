-- Records one event for each site and visitor it names (live mode's State::touch, on
-- the fleet's state). ARGV: now (ms), session timeout (ms), visitors at most, kind (p:
-- page view, e: engagement, c: custom), device (0-4, or -1 when the event names no
-- screen width), path, referrer ('' for none), then site and visitor id pairs. Returns
-- {1 when counted for some site, visitors evicted}.
local now, timeout, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local kind, device, path, referrer = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
-- An event is never older than the window's closed part.
now = math.max(now, tonumber(redis.call('GET', P .. 'cutoff') or '0'))
local counted, evicted = 0, 0
for i = 8, #ARGV, 2 do
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
