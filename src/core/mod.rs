//! The core: the embedding service (`embed`), tenants and their keys' owners (`tenants`), rate
//! limits (`limits`), usage (`usage`) and what replicas share (`shared`, the trait the Redis
//! adapter implements). It knows no transport: no HTTP, no Lambda, no Redis; its calls return
//! values that the adapters turn into responses, headers and metrics.

pub(crate) mod clip;
pub(crate) mod embed;
pub(crate) mod limits;
pub(crate) mod shared;
pub(crate) mod tenants;
pub(crate) mod usage;
