//! Running the service: the composition root that builds it from settings (`app`), the two
//! doors to the same router (`server`, a long-lived HTTP server; `lambda`, an AWS Lambda
//! function), and configuration reload (`reload`).

pub mod app;
pub mod lambda;
pub mod reload;
pub mod server;

pub use app::{App, AppState, build_app, build_app_with};
