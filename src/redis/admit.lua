local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- Arithmetic in whole nanoseconds relative to now: a double holds now in microseconds exactly,
-- but not now plus a fraction of one (at today's epoch it keeps a quarter of a microsecond), and
-- that rounding refused requests the process's own GCRA admits (a burst of 1 at 24/s: always).
-- A bucket's theoretical arrival time (TAT) is stored as microseconds with three decimals.
local function debt_of(key)
  local stored = redis.call('GET', key)
  if not stored then return 0 end
  local us, frac = string.match(stored, '^(%d+)%.?(%d*)')
  if not us then return 0 end
  local debt = (tonumber(us) - now) * 1000 + tonumber(string.sub(frac .. '000', 1, 3))
  if debt < 0 then return 0 end
  return debt
end
local function store(key, debt)
  local tat = string.format('%d.%03d', now + math.floor(debt / 1000), debt % 1000)
  redis.call('SET', key, tat, 'PX', math.ceil(debt / 1000000) + 1)
end
local function ns(micros) return math.floor(tonumber(micros) * 1000 + 0.5) end
local r_int, r_lim = ns(ARGV[1]), tonumber(ARGV[2])
local k_int, k_lim, n = ns(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local r_debt, k_debt = debt_of(KEYS[1]), debt_of(KEYS[2])
local r_next, k_next = r_debt + r_int, k_debt + n * k_int
local refused, wait = 0, 0
if r_next > r_int * r_lim then
  refused, wait = 1, r_next - r_int * r_lim
elseif n > k_lim then
  refused, wait = 2, -1
elseif k_next > k_int * k_lim then
  refused, wait = 2, k_next - k_int * k_lim
else
  store(KEYS[1], r_next)
  if n > 0 then store(KEYS[2], k_next) end
  r_debt, k_debt = r_next, k_next
end
return {refused, wait, r_debt, k_debt}
