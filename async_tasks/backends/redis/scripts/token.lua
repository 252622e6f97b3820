-- Take one token from a bucket refilled at `rate` per second, holding at most `burst`.
-- A take re-sent after its reply was lost answers as the first did (no second token).
-- ARGV: 7 bucket, 8 rate, 9 burst. Returns the seconds to wait, as a string ('0': granted).
local key = P .. 'b:' .. ARGV[7]
local rate, burst = tonumber(ARGV[8]), tonumber(ARGV[9])
local f = redis.call('HMGET', key, 'tokens', 'at', 'op', 'answer')
if OP ~= '' and f[3] == OP then return f[4] end
local now
if CLOCK ~= '' then
  now = tonumber(CLOCK) / 1000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tokens, last = tonumber(f[1]), tonumber(f[2])
if not tokens then tokens, last = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = '0'
if tokens < 1 then
  wait = string.format('%.6f', (1 - tokens) / rate)
else
  tokens = tokens - 1
end
redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now), 'op', OP,
  'answer', wait)
-- A full bucket is the same as none: it goes once it would have refilled.
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
return wait
