//! One file per route (or family of routes): each translates between its wire format and the
//! core.

pub(super) mod cohere;
pub(super) mod embed;
pub(super) mod health;
pub(super) mod models;
pub(super) mod openai;
pub(super) mod rerank;
pub(super) mod tei;
pub(super) mod tokenize;
pub(super) mod usage;
