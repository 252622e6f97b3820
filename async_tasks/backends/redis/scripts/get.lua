-- One task with its history, if it belongs to the session.
-- ARGV: 7 session, 8 task id. Returns the JSON, or nil.
if redis.call('HGET', tkey(ARGV[8]), '_s') ~= ARGV[7] then return false end
return record_json(ARGV[8])
