if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
local i = 2
for k = 2, #KEYS do
  local fields = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, fields do
    redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return 1
