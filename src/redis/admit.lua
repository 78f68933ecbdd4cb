local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function tat_of(key)
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then return now end
  return tat
end
local r_int, r_lim = tonumber(ARGV[1]), tonumber(ARGV[2])
local k_int, k_lim, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local r_tat, k_tat = tat_of(KEYS[1]), tat_of(KEYS[2])
local r_next, k_next = r_tat + r_int, k_tat + n * k_int
local refused, wait = 0, 0
if r_next - now > r_int * r_lim then
  refused, wait = 1, r_next - now - r_int * r_lim
elseif n > k_lim then
  refused, wait = 2, -1
elseif k_next - now > k_int * k_lim then
  refused, wait = 2, k_next - now - k_int * k_lim
else
  redis.call('SET', KEYS[1], string.format('%.17g', r_next), 'PX', math.ceil((r_next - now) / 1000) + 1)
  if n > 0 then
    redis.call('SET', KEYS[2], string.format('%.17g', k_next), 'PX', math.ceil((k_next - now) / 1000) + 1)
  end
  r_tat, k_tat = r_next, k_next
end
-- In nanoseconds: a microsecond is many tokens of a large tokens-per-minute limit.
return {refused, math.ceil(wait * 1000), math.ceil((r_tat - now) * 1000), math.ceil((k_tat - now) * 1000)}
