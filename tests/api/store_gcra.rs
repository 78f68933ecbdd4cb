//! The rate-limit arithmetic in Redis (`src/redis/admit.lua`) against the process's own
//! (`src/core/limits/gcra.rs`, compiled here from the same file): random limits and random
//! sequences of requests (a time and a token count each) get the same decisions, waits and
//! bucket states from both, to the nanosecond, the script running on a real Redis. The seed is
//! fixed, so a failure repeats.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::cluster::Redis;
#[allow(dead_code)]
#[path = "../../src/core/limits/gcra.rs"]
mod gcra;
use gcra::{Gcra, Refusal};

/// Where the sequences start: Redis's clock in 2025 (µs since 1970), a size at which a double
/// no longer holds a fraction of a microsecond: the script must not depend on one.
const START_US: u64 = 1_764_633_600_000_000;

/// admit.lua with its clock read from ARGV[6] instead of Redis's `TIME`, so both sides decide
/// at the same instants; the rest is the script as shipped.
fn script_on_given_clock() -> String {
    let script = include_str!("../../src/redis/admit.lua");
    let clock = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n";
    assert!(
        script.starts_with(clock),
        "admit.lua no longer starts by reading Redis's clock: update this test"
    );
    format!("local now = tonumber(ARGV[6])\n{}", &script[clock.len()..])
}

/// A tenant's limits and its requests: microseconds since the previous one, and tokens.
#[derive(Debug, Clone)]
struct Sequence {
    requests_per_second: u32,
    burst: u32,
    tokens_per_minute: u32,
    requests: Vec<(u64, u64)>,
}

fn sequences() -> impl Strategy<Value = Sequence> {
    (1u32..=50, 1u32..=20, 1u32..=200_000).prop_flat_map(|(rps, burst, tpm)| {
        let gap = prop_oneof![Just(0u64), 0u64..50_000, 0u64..2_000_000, 10_000_000u64..120_000_000];
        let tpm = u64::from(tpm);
        let tokens = prop_oneof![0..=(tpm / 10).max(1), 0..=tpm + tpm / 4 + 1];
        proptest::collection::vec((gap, tokens), 1..40).prop_map(move |requests| Sequence {
            requests_per_second: rps,
            burst,
            tokens_per_minute: tpm as u32,
            requests,
        })
    })
}

/// One decision: the refusing bucket (0 none, 1 requests, 2 tokens), the wait in ns (-1:
/// never), and each bucket's debt (arrival time less now) in ns after it: what the script returns.
type Decision = (i64, i64, i64, i64);

/// The process's decision at `now` (ns), updating its arrival times.
fn decide_here(buckets: (&Gcra, &Gcra), tats: &mut (u64, u64), now: u64, tokens: u64) -> Decision {
    let (requests, token_bucket) = buckets;
    let (refused, wait) =
        match Gcra::decide_both((requests, tats.0, now, 1), (token_bucket, tats.1, now, tokens)) {
            Ok(next) => {
                *tats = next;
                (0, 0)
            }
            Err((first, refusal)) => {
                let wait = match refusal {
                    Refusal::RetryAfter(wait, _) => wait.as_nanos() as i64,
                    Refusal::Never(_) => -1,
                };
                (if first { 1 } else { 2 }, wait)
            }
        };
    let debt = |tat: u64| tat.saturating_sub(now) as i64;
    (refused, wait, debt(tats.0), debt(tats.1))
}

#[test]
fn the_redis_script_and_the_process_decide_every_request_alike() {
    let redis = Redis::start("gcra");
    let conn = RefCell::new(redis.connection());
    let script = script_on_given_clock();
    let runs = Cell::new(0u64);
    let decisions = Cell::new((0u64, 0u64));
    let config = Config { cases: 300, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let outcome = runner.run(&sequences(), |seq| {
        runs.set(runs.get() + 1);
        let keys = [format!("gcra:{}:requests", runs.get()), format!("gcra:{}:tokens", runs.get())];
        let requests = Gcra::new(seq.requests_per_second, Duration::from_secs(1), seq.burst);
        let tokens = Gcra::new(seq.tokens_per_minute, Duration::from_secs(60), seq.tokens_per_minute);
        // As the Redis store sends them: µs per unit with six decimals, and the bucket sizes.
        let micros = |g: &Gcra| format!("{:.6}", g.interval().as_secs_f64() * 1e6);
        let mut tats = (0, 0);
        let mut now_us = START_US;
        for (i, &(gap, n)) in seq.requests.iter().enumerate() {
            now_us += gap;
            let here = decide_here((&requests, &tokens), &mut tats, now_us * 1_000, n);
            // In one transaction with PERSIST: the keys expire by Redis's real clock, which
            // this test does not follow.
            let (there,): (Decision,) = redis::pipe()
                .atomic()
                .cmd("EVAL")
                .arg(&script)
                .arg(2)
                .arg(&keys[0])
                .arg(&keys[1])
                .arg(micros(&requests))
                .arg(requests.limit())
                .arg(micros(&tokens))
                .arg(tokens.limit())
                .arg(n)
                .arg(now_us)
                .cmd("PERSIST")
                .arg(&keys[0])
                .ignore()
                .cmd("PERSIST")
                .arg(&keys[1])
                .ignore()
                .query(&mut *conn.borrow_mut())
                .unwrap();
            let (admitted, refused) = decisions.get();
            decisions.set(if here.0 == 0 { (admitted + 1, refused) } else { (admitted, refused + 1) });
            // The same wait to the nanosecond: the same Retry-After too.
            prop_assert_eq!(here, there, "request {} ({} tokens): here, then in Redis", i, n);
        }
        Ok(())
    });
    let (admitted, refused) = decisions.get();
    println!("{} sequences: {admitted} requests admitted, {refused} refused alike", runs.get());
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // The sweep reached both answers, often.
    assert!(admitted > 1_000 && refused > 1_000, "{admitted} admitted, {refused} refused");
}
