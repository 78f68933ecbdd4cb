//! The token bound on each model's queue, and each tenant's share of it: a request that would
//! overfill either is refused at once, so a flooding tenant leaves room for the others and a
//! flood's refusals cost no tokenizing: a request reserves an estimate of its tokens before it
//! is tokenized, then the exact count. A request's tokens are held by a [`Reservation`], which
//! gives back whatever it still holds when dropped: a job lost to a panic or a stopped worker
//! cannot leak queue room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::models::error::ModelError;

/// Tokens queued for a model, against its bound and each tenant's share of it.
pub(crate) struct QueuedTokens {
    state: Mutex<Queued>,
    max: usize,
    tenant_max: usize,
}

#[derive(Default)]
struct Queued {
    total: usize,
    by_tenant: HashMap<Arc<str>, usize>,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The model's queue is full (503).
    Full,
    /// The tenant already holds its share of the queue (429).
    TenantShare,
}

impl QueuedTokens {
    /// `max` tokens in all; one tenant may hold `tenant_percent` of them.
    pub(crate) fn new(max: usize, tenant_percent: u8) -> Self {
        let tenant_max = (max * usize::from(tenant_percent.clamp(1, 100)) / 100).max(1);
        Self { state: Mutex::new(Queued::default()), max, tenant_max }
    }

    /// Reserves `tenant`'s `tokens`, or refuses. A request larger than a bound is admitted when
    /// nothing of the queue (or of the tenant's share) is taken, so it can still run.
    pub(crate) fn reserve(&self, tenant: &Arc<str>, tokens: usize) -> Result<(), QueueRefusal> {
        self.reserve_beside(tenant, tokens, 0)
    }

    /// [`Self::reserve`] for a request that already holds `held` tokens: it is admitted as if
    /// alone when nothing but its own reservation is taken.
    fn reserve_beside(&self, tenant: &Arc<str>, tokens: usize, held: usize) -> Result<(), QueueRefusal> {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if q.total > held && q.total + tokens > self.max {
            return Err(QueueRefusal::Full);
        }
        let mine = q.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine > held && mine + tokens > self.tenant_max {
            return Err(QueueRefusal::TenantShare);
        }
        q.total += tokens;
        *q.by_tenant.entry(Arc::clone(tenant)).or_insert(0) += tokens;
        Ok(())
    }

    /// [`Self::reserve`], held by a [`Reservation`] that releases the tokens when dropped.
    pub(crate) fn hold(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        tokens: usize,
    ) -> Result<Reservation, QueueRefusal> {
        self.reserve(tenant, tokens)?;
        Ok(Reservation { queued: Arc::clone(self), tenant: Arc::clone(tenant), tokens })
    }

    pub(crate) fn release(&self, tenant: &Arc<str>, tokens: usize) {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        q.total = q.total.saturating_sub(tokens);
        if let Some(mine) = q.by_tenant.get_mut(tenant) {
            *mine = mine.saturating_sub(tokens);
            if *mine == 0 {
                q.by_tenant.remove(tenant);
            }
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// A request's tokens in a model's queue. The worker releases them piece by piece as it takes
/// them; dropping the reservation releases the rest, however the request ends.
pub(crate) struct Reservation {
    queued: Arc<QueuedTokens>,
    tenant: Arc<str>,
    tokens: usize,
}

impl Reservation {
    /// Gives back `tokens` of the reservation (at most what it still holds).
    pub(crate) fn release(&mut self, tokens: usize) {
        let tokens = tokens.min(self.tokens);
        self.tokens -= tokens;
        self.queued.release(&self.tenant, tokens);
    }
}

impl Reservation {
    /// Sets the reservation to `tokens`: gives back what it holds beyond them, or reserves the
    /// difference (refused as [`QueuedTokens::reserve`] refuses).
    pub(crate) fn resize(&mut self, tokens: usize) -> Result<(), QueueRefusal> {
        if tokens > self.tokens {
            self.queued.reserve_beside(&self.tenant, tokens - self.tokens, self.tokens)?;
            self.tokens = tokens;
        } else {
            self.release(self.tokens - tokens);
        }
        Ok(())
    }

    pub(crate) fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release(self.tokens);
    }
}

impl From<QueueRefusal> for ModelError {
    fn from(refusal: QueueRefusal) -> Self {
        match refusal {
            QueueRefusal::Full => ModelError::QueueFull,
            QueueRefusal::TenantShare => ModelError::TenantQueueFull,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_cannot_take_more_than_its_share_and_others_still_get_in() {
        let budget = QueuedTokens::new(1000, 50);
        let (flood, quiet): (Arc<str>, Arc<str>) = (Arc::from("flood"), Arc::from("quiet"));
        assert_eq!(budget.reserve(&flood, 400), Ok(()));
        assert_eq!(budget.reserve(&flood, 200), Err(QueueRefusal::TenantShare));
        assert_eq!(budget.reserve(&quiet, 500), Ok(()));
        assert_eq!(budget.reserve(&quiet, 200), Err(QueueRefusal::Full));
        budget.release(&flood, 400);
        assert_eq!(budget.queued(), 500);
        assert_eq!(budget.reserve(&flood, 500), Ok(()), "a freed share is usable again");
    }

    #[test]
    fn a_request_larger_than_the_bounds_runs_when_nothing_is_queued() {
        let budget = QueuedTokens::new(100, 50);
        let tenant: Arc<str> = Arc::from("t");
        assert_eq!(budget.reserve(&tenant, 5000), Ok(()));
        assert_eq!(budget.reserve(&tenant, 1), Err(QueueRefusal::Full));
        budget.release(&tenant, 5000);
        assert_eq!(budget.queued(), 0);
    }

    #[test]
    fn a_reservation_resized_to_the_exact_count_gives_back_or_takes_the_difference() {
        let budget = Arc::new(QueuedTokens::new(100, 100));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut estimate = budget.hold(&a, 40).unwrap();
        estimate.resize(10).unwrap();
        assert_eq!(budget.queued(), 10, "an over-estimate is given back");
        let _other = budget.hold(&b, 80).unwrap();
        assert_eq!(estimate.resize(30), Err(QueueRefusal::Full), "growing past the bound is refused");
        assert_eq!(budget.queued(), 90, "a refused growth holds what it held");
        drop(_other);
        assert_eq!(estimate.resize(500), Ok(()), "alone in the queue, any size runs");
        assert_eq!(budget.queued(), 500);
        drop(estimate);
        assert_eq!(budget.queued(), 0);
    }

    #[test]
    fn a_dropped_reservation_gives_back_what_it_still_holds() {
        let budget = Arc::new(QueuedTokens::new(100, 100));
        let tenant: Arc<str> = Arc::from("t");
        let mut held = budget.hold(&tenant, 60).unwrap();
        held.release(25);
        assert_eq!(budget.queued(), 35);
        held.release(1_000);
        assert_eq!(budget.queued(), 0, "never more than it holds");
        let _other = budget.hold(&tenant, 30).unwrap();
        drop(budget.hold(&tenant, 50).unwrap());
        assert_eq!(budget.queued(), 30, "only the dropped one's tokens came back");
    }
}
