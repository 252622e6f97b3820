-- Running and waiting tasks by executor, across the deployment (the admin view), for the
-- given executors and any other that has tasks in delivery or workers. O(executors +
-- running tasks).
-- ARGV: 7.. executor names.
-- Returns {executor, tasks in delivery (parked, delayed or dispatched, running included),
-- running, workers taking tasks that run it, ...}.
local names, seen = {}, {}
local function add(E) if not seen[E] then seen[E] = true; names[#names + 1] = E end end
for i = 7, #ARGV do add(ARGV[i]) end
local queued = redis.call('HGETALL', P .. 'xq')
for i = 1, #queued, 2 do add(queued[i]) end
local offered = redis.call('HGETALL', P .. 'offered')
for i = 1, #offered, 2 do add(offered[i]) end
local out = {}
for _, E in ipairs(names) do
  out[#out + 1] = E
  out[#out + 1] = counter(P .. 'xq', E)
  out[#out + 1] = redis.call('ZINTERCARD', 2, P .. 'as:running', P .. 'ae:' .. E)
  out[#out + 1] = counter(P .. 'offered', E)
end
return out
