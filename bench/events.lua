-- wrk's script for scripts/bench.sh's live mode figures: every request is a page view
-- (POST /api/event, as Plausible's tracker sends it) from the next of $VISITORS
-- visitors, each its own address in X-Forwarded-For (which the server trusts with
-- TRUSTED_PROXY_HOPS=1), on one of 50 pages.
local visitors = tonumber(os.getenv("VISITORS") or "10000")
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"

function request()
  n = (n + 1) % visitors
  wrk.headers["X-Forwarded-For"] =
    string.format("10.%d.%d.%d", math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
  return wrk.format(nil, nil, nil, string.format(
    '{"n":"pageview","u":"https://example.com/page/%d","d":"example.com","w":1280}', n % 50))
end
