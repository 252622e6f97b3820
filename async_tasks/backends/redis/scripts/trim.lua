-- Retention: remove the oldest-finished tasks beyond the limits, in the given sessions,
-- at most `budget` tasks per call (a script holds Redis while it runs).
-- ARGV: 7 max completed, 8 max failed, 9 max cancelled, 10 budget, 11.. sessions.
-- Returns {completed, failed, cancelled, budget left, removed}.
local limits = {completed = tonumber(ARGV[7]), failed = tonumber(ARGV[8]), cancelled = tonumber(ARGV[9])}
local budget = tonumber(ARGV[10])
local removed = {completed = 0, failed = 0, cancelled = 0}
for i = 11, #ARGV do
  local S = ARGV[i]
  for _, status in ipairs({'completed', 'failed', 'cancelled'}) do
    local index = P .. 'f:' .. S .. ':' .. status
    local excess = redis.call('ZCARD', index) - limits[status]
    if excess > 0 and budget > 0 then
      local ids = redis.call('ZRANGE', index, 0, math.min(excess, budget) - 1)
      for _, id in ipairs(ids) do drop(S, id, 'retention') end
      removed[status] = removed[status] + #ids
      budget = budget - #ids
    end
  end
  forget_session_if_empty(S)
end
return {removed.completed, removed.failed, removed.cancelled, budget, REMOVED}
