-- A page of the sessions holding tasks, the most recently changed first (the admin view),
-- each with its counts by status: the work is the page's, however many sessions there are.
-- ARGV: 7 offset, 8 limit.
-- Returns {total, {session, changed ms, pending, running, completed, failed, cancelled, ...}}.
local offset, limit = tonumber(ARGV[7]), tonumber(ARGV[8])
local page = {}
if limit > 0 then
  local flat = redis.call('ZREVRANGE', P .. 'changed', offset, offset + limit - 1, 'WITHSCORES')
  for i = 1, #flat, 2 do
    page[#page + 1] = flat[i]
    page[#page + 1] = flat[i + 1]
    for _, status in ipairs({'pending', 'running', 'completed', 'failed', 'cancelled'}) do
      page[#page + 1] = in_status(flat[i], status)
    end
  end
end
return {redis.call('SCARD', P .. 'sessions'), page}
