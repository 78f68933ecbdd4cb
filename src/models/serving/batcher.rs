//! Fair batch formation: deficit round-robin by tokens across tenants.
//!
//! Each tenant has a lane of queued jobs. Forming a batch visits the lanes in turn; each visit
//! adds `quantum` tokens to the lane's deficit, and the lane gives up jobs from its head while
//! their tokens fit the deficit and the batch has room for their inputs. A tenant sending ten
//! times its share therefore gets about one share per round, not ten. A lane that was empty
//! joins the turn ahead of the heavy lanes (those holding more than a quantum), behind the
//! light ones, so a quiet tenant's single request is taken in the very next round whatever
//! the flood ahead of it, while light lanes keep their order and none of them is passed over.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What the batcher needs to know of a job.
pub(crate) trait Weighed {
    fn tenant(&self) -> &Arc<str>;
    /// Tokens the job costs (its inputs' tokens, unpadded).
    fn tokens(&self) -> usize;
    fn inputs(&self) -> usize;
}

pub(crate) struct FairQueue<J> {
    lanes: HashMap<Arc<str>, Lane<J>>,
    /// Tenants with queued jobs, in visiting order.
    turn: VecDeque<Arc<str>>,
    quantum: usize,
    inputs: usize,
}

struct Lane<J> {
    jobs: VecDeque<J>,
    deficit: usize,
    /// Tokens queued in the lane.
    tokens: usize,
}

impl<J: Weighed> FairQueue<J> {
    pub(crate) fn new(quantum: usize) -> Self {
        Self { lanes: HashMap::new(), turn: VecDeque::new(), quantum: quantum.max(1), inputs: 0 }
    }

    pub(crate) fn push(&mut self, job: J) {
        self.inputs += job.inputs();
        let tenant = Arc::clone(job.tenant());
        let lane = self.lanes.entry(Arc::clone(&tenant)).or_insert_with(|| Lane {
            jobs: VecDeque::new(),
            deficit: 0,
            tokens: 0,
        });
        let new = lane.jobs.is_empty();
        lane.tokens += job.tokens();
        lane.jobs.push_back(job);
        if new {
            let heavy = self.turn.iter().position(|t| self.lanes[t].tokens > self.quantum);
            self.turn.insert(heavy.unwrap_or(self.turn.len()), tenant);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }

    /// Inputs queued, all tenants together.
    pub(crate) fn inputs(&self) -> usize {
        self.inputs
    }

    /// Removes the jobs `gone` selects (clients that went away) and returns them.
    pub(crate) fn remove_where(&mut self, mut gone: impl FnMut(&J) -> bool) -> Vec<J> {
        let mut removed = Vec::new();
        for lane in self.lanes.values_mut() {
            let (out, kept): (Vec<J>, Vec<J>) = lane.jobs.drain(..).partition(|j| gone(j));
            lane.jobs = kept.into();
            lane.tokens -= out.iter().map(Weighed::tokens).sum::<usize>();
            removed.extend(out);
        }
        self.inputs -= removed.iter().map(Weighed::inputs).sum::<usize>();
        self.lanes.retain(|_, lane| !lane.jobs.is_empty());
        self.turn.retain(|t| self.lanes.contains_key(t));
        removed
    }

    /// The next batch: at most `max_inputs` inputs unless a single job is larger, never empty
    /// while jobs are queued.
    pub(crate) fn next_batch(&mut self, max_inputs: usize) -> Vec<J> {
        let mut batch = Vec::new();
        let mut inputs = 0;
        // Visits since a job was last taken: a whole turn without one ends a non-empty batch.
        let mut fruitless = 0;
        while let Some(tenant) = self.turn.pop_front() {
            // Every tenant in turn has a lane; one without is skipped rather than trusted.
            let Some(lane) = self.lanes.get_mut(&tenant) else { continue };
            lane.deficit += self.quantum;
            let mut full = false;
            let mut took = false;
            while let Some(job) = lane.jobs.pop_front() {
                if job.tokens() > lane.deficit {
                    lane.jobs.push_front(job);
                    break;
                }
                if !batch.is_empty() && inputs + job.inputs() > max_inputs {
                    lane.jobs.push_front(job);
                    full = true;
                    break;
                }
                lane.deficit -= job.tokens();
                lane.tokens -= job.tokens();
                inputs += job.inputs();
                batch.push(job);
                took = true;
            }
            if lane.jobs.is_empty() {
                self.lanes.remove(&tenant);
            } else {
                self.turn.push_back(tenant);
            }
            fruitless = if took { 0 } else { fruitless + 1 };
            if full || inputs >= max_inputs || (!batch.is_empty() && fruitless >= self.turn.len()) {
                break;
            }
        }
        self.inputs -= inputs;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct J(Arc<str>, usize, usize);

    impl Weighed for J {
        fn tenant(&self) -> &Arc<str> {
            &self.0
        }
        fn tokens(&self) -> usize {
            self.1
        }
        fn inputs(&self) -> usize {
            self.2
        }
    }

    fn job(tenant: &str, tokens: usize, inputs: usize) -> J {
        J(Arc::from(tenant), tokens, inputs)
    }

    #[test]
    fn a_quiet_tenant_is_served_in_the_next_batch_behind_a_flood() {
        let mut q = FairQueue::new(512);
        for _ in 0..100 {
            q.push(job("flood", 112, 8));
        }
        assert!(q.next_batch(8).iter().all(|j| &*j.0 == "flood"));
        q.push(job("quiet", 14, 1));
        let next = q.next_batch(8);
        assert_eq!(&*next[0].0, "quiet", "a newly active tenant goes first: {next:?}");
        // Once it is busy, it takes its turn like any other.
        for _ in 0..3 {
            q.push(job("quiet", 14, 1));
        }
        let turn: Vec<String> = (0..2).flat_map(|_| q.next_batch(8)).map(|j| j.0.to_string()).collect();
        assert!(turn.iter().any(|t| t == "flood") && turn.iter().any(|t| t == "quiet"), "{turn:?}");
    }

    #[test]
    fn newcomers_do_not_pass_light_lanes() {
        let mut q = FairQueue::new(512);
        q.push(job("a", 14, 1));
        q.push(job("a", 14, 1));
        q.push(job("b", 14, 1));
        q.push(job("c", 14, 1));
        let order: Vec<String> = (0..4).flat_map(|_| q.next_batch(1)).map(|j| j.0.to_string()).collect();
        assert_eq!(order, ["a", "b", "c", "a"]);
    }

    #[test]
    fn shares_are_even_in_tokens_not_in_jobs() {
        let mut q = FairQueue::new(100);
        for _ in 0..50 {
            q.push(job("big", 100, 10));
            for _ in 0..10 {
                q.push(job("small", 10, 1));
            }
        }
        let (mut big, mut small) = (0, 0);
        for _ in 0..10 {
            for j in q.next_batch(64) {
                if &*j.0 == "big" { big += j.1 } else { small += j.1 }
            }
        }
        let ratio = big as f64 / small as f64;
        assert!((0.8..1.25).contains(&ratio), "tokens big {big} vs small {small}");
    }

    #[test]
    fn a_job_larger_than_the_batch_still_runs_alone_and_nothing_is_lost() {
        let mut q = FairQueue::new(16);
        q.push(job("a", 5000, 256));
        q.push(job("b", 3, 1));
        let mut seen = 0;
        while !q.is_empty() {
            let batch = q.next_batch(32);
            assert!(!batch.is_empty());
            seen += batch.len();
        }
        assert_eq!(seen, 2);
        assert_eq!(q.inputs(), 0);
    }

    #[test]
    fn removed_jobs_leave_the_queue() {
        let mut q = FairQueue::new(16);
        q.push(job("a", 5, 1));
        q.push(job("b", 5, 2));
        let gone = q.remove_where(|j| &*j.0 == "a");
        assert_eq!(gone.len(), 1);
        assert_eq!(q.inputs(), 2);
        assert_eq!(q.next_batch(32).len(), 1);
        assert!(q.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever is queued, draining never loses, repeats or reorders a tenant's jobs,
            /// never returns an empty batch while jobs wait, and keeps to the batch size
            /// unless a single job is larger.
            #[test]
            fn draining_keeps_every_job_once_in_lane_order_within_the_batch_size(
                jobs in prop::collection::vec((0u8..5, 1usize..700, 1usize..9), 1..120),
                quantum in 1usize..1024,
                max_inputs in 1usize..40,
            ) {
                let mut q = FairQueue::new(quantum);
                for (n, &(tenant, tokens, inputs)) in jobs.iter().enumerate() {
                    // The job's position is its token count's tiebreak: (tokens * 1000 + n).
                    q.push(J(Arc::from(format!("t{tenant}")), tokens * 1000 + n, inputs));
                }
                let mut seen = Vec::new();
                let mut rounds = 0;
                while !q.is_empty() {
                    let batch = q.next_batch(max_inputs);
                    prop_assert!(!batch.is_empty());
                    let inputs: usize = batch.iter().map(|j| j.2).sum();
                    prop_assert!(inputs <= max_inputs || batch.len() == 1, "{inputs} inputs in {} jobs", batch.len());
                    seen.extend(batch.into_iter().map(|j| (j.0.to_string(), j.1 % 1000)));
                    rounds += 1;
                    prop_assert!(rounds <= jobs.len(), "more rounds than jobs");
                }
                prop_assert_eq!(q.inputs(), 0);
                let mut order: Vec<usize> = seen.iter().map(|(_, n)| *n).collect();
                order.sort_unstable();
                prop_assert_eq!(order, (0..jobs.len()).collect::<Vec<_>>());
                for tenant in 0..5 {
                    let lane: Vec<usize> = seen.iter().filter(|(t, _)| *t == format!("t{tenant}")).map(|(_, n)| *n).collect();
                    prop_assert!(lane.windows(2).all(|w| w[0] < w[1]), "t{} out of order: {:?}", tenant, lane);
                }
            }
        }
    }
}
