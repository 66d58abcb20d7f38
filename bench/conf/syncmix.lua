-- wrk script for the mixed-latency sync-pool case: 1 request in 20 goes to a
-- slow view (bench-sync-pool sleeps 500 ms for paths with /slow), the rest
-- to a 20 ms one. Deterministic, so every proxy sees the same mix.
local n = 0
request = function()
  n = n + 1
  if n % 20 == 0 then
    return wrap_path("/sync/slow")
  end
  return wrap_path("/sync/")
end

function wrap_path(path)
  return wrk.format("GET", path)
end
