-- A page of the session's tasks, newest first, as summaries (never params, metadata, results
-- or history): the work is the page's, whatever the session holds. Filters use the session's
-- indexes (by status, executor, tag, dead letter): the smallest one given is walked and the
-- others checked per task, at most `SCAN` tasks per call; a page cut short by that bound
-- still says where to go on (`next`). With `every`, the same across every session (the admin
-- view), on the indexes of every task.
-- ARGV: 7 session, 8 status (''), 9 executor (''), 10 tag (''), 11 dead letter ('', 'true',
-- 'false'), 12 offset, 13 limit (-1: all), 14 cursor ('' or the sequence number to continue
-- below), 15 every ('1': every session's tasks; the session is ignored).
-- Returns {total, JSON array of summaries, next cursor ('' at the end)}.
local SCAN = 2000
local S = ARGV[7]
local status, executor, tag, dead = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local offset, limit = tonumber(ARGV[12]), tonumber(ARGV[13])
local all, by_status, by_executor, by_tag, dead_letter
if ARGV[15] == '1' then
  all, by_status, by_executor, by_tag, dead_letter = P .. 'all', P .. 'as:', P .. 'ae:', P .. 'ag:', P .. 'ad'
else
  all, by_status, by_executor = P .. 's:' .. S, P .. 'ss:' .. S .. ':', P .. 'se:' .. S .. ':'
  by_tag, dead_letter = P .. 'st:' .. S .. ':', P .. 'sd:' .. S
end
local filters = {}
if status ~= '' then filters[#filters + 1] = by_status .. status end
if executor ~= '' then filters[#filters + 1] = by_executor .. executor end
if tag ~= '' then filters[#filters + 1] = by_tag .. tag end
if dead == 'true' then filters[#filters + 1] = dead_letter end
local walk, total = all, nil
if #filters == 0 then
  total = redis.call('ZCARD', walk)
else
  local size
  for _, index in ipairs(filters) do
    local n = redis.call('ZCARD', index)
    if not size or n < size then walk, size = index, n end
  end
  if #filters == 1 then total = size else total = redis.call('ZINTERCARD', #filters, unpack(filters)) end
end
if dead == 'false' then
  local both = {unpack(filters)}
  both[#both + 1] = dead_letter
  if #filters == 0 then both[#both + 1] = walk end
  total = total - redis.call('ZINTERCARD', #both, unpack(both))
end
local function matches(id)
  for _, index in ipairs(filters) do
    if index ~= walk and not redis.call('ZSCORE', index, id) then return false end
  end
  if dead == 'false' and redis.call('ZSCORE', dead_letter, id) then return false end
  return true
end
if #filters <= 1 and dead ~= 'false' and ARGV[14] == '' then
  -- Every task of the index matches: the page by rank, O(log n + page).
  local stop = -1
  if limit >= 0 then stop = offset + limit - 1 end
  local page = {}
  local flat = {}
  if limit ~= 0 then flat = redis.call('ZREVRANGE', walk, offset, stop, 'WITHSCORES') end
  for i = 1, #flat, 2 do page[#page + 1] = summary_json(flat[i]) end
  local next_cursor = ''
  if #flat > 0 and stop >= 0 and stop + 1 < total then next_cursor = flat[#flat] end
  return {total, '[' .. table.concat(page, ',') .. ']', next_cursor}
end
local page, seen = {}, 0
local top = '+inf'
if ARGV[14] ~= '' then top = '(' .. ARGV[14] end
local skip = offset
local more = false
while limit ~= 0 and (limit < 0 or #page < limit) do
  if seen >= SCAN then more = true; break end
  local batch = redis.call('ZREVRANGEBYSCORE', walk, top, '-inf', 'WITHSCORES', 'LIMIT', 0, math.min(256, SCAN - seen))
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    seen = seen + 1
    top = '(' .. batch[i + 1]
    if matches(batch[i]) then
      if skip > 0 then skip = skip - 1 else page[#page + 1] = summary_json(batch[i]) end
      if limit >= 0 and #page >= limit then break end
    end
  end
end
local next_cursor = ''
if (more or (limit >= 0 and #page >= limit)) and top ~= '+inf' then
  -- Something older may still match: continue below the last task looked at.
  if redis.call('ZCOUNT', walk, '-inf', top) > 0 then next_cursor = string.sub(top, 2) end
end
return {total, '[' .. table.concat(page, ',') .. ']', next_cursor}
