//! One file per route: each translates between its wire format and the core.

pub(super) mod embed;
pub(super) mod health;
pub(super) mod models;
pub(super) mod openai;
pub(super) mod tokenize;
pub(super) mod usage;
