//! The `embedserve` command: serve, or check a configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use embedserve::Settings;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Multi-tenant text embeddings over ONNX Runtime")]
struct Cli {
    /// Without one, runs as a Lambda function when AWS_LAMBDA_RUNTIME_API is set.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The Lambda package's configuration, relative to the working directory (/var/task).
const LAMBDA_CONFIG: &str = "config/lambda.toml";

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        #[arg(long, env = "EMBEDSERVE_CONFIG", default_value = "config/default.toml")]
        config: PathBuf,
        /// Overrides `server.bind`.
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Overrides `server.metrics_bind`, the private `/metrics` listener.
        #[arg(long)]
        metrics_bind: Option<SocketAddr>,
    },
    /// Validate a configuration file and list every problem, with its file and field.
    CheckConfig {
        #[arg(long, env = "EMBEDSERVE_CONFIG", default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Run as an AWS Lambda function (what the `bootstrap` does when AWS_LAMBDA_RUNTIME_API is set).
    Lambda {
        #[arg(long, env = "EMBEDSERVE_CONFIG", default_value = LAMBDA_CONFIG)]
        config: PathBuf,
    },
    /// Read an API key on stdin and print the SHA-256 hash to put in a tenant's `keys`.
    HashKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The Lambda runtime sets AWS_LAMBDA_RUNTIME_API and starts `bootstrap` with no arguments.
    let command = match cli.command {
        Some(command) => command,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda {
            config: std::env::var_os("EMBEDSERVE_CONFIG")
                .map_or_else(|| PathBuf::from(LAMBDA_CONFIG), PathBuf::from),
        },
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return ExitCode::FAILURE;
        }
    };
    init_logging(matches!(command, Command::Lambda { .. }));
    let result = match command {
        Command::Serve { config, bind, metrics_bind } => Settings::load(&config).and_then(|settings| {
            tokio::runtime::Runtime::new()?.block_on(embedserve::run::server::serve(
                settings,
                bind,
                metrics_bind,
            ))
        }),
        Command::CheckConfig { config } => Settings::load(&config).and_then(|s| {
            let problems = s.file_problems();
            if !problems.is_empty() {
                let file = config.display();
                let lines: Vec<String> = problems.iter().map(|p| format!("{file}: {p}")).collect();
                anyhow::bail!("invalid config {file}: {} problem(s)\n  {}", lines.len(), lines.join("\n  "));
            }
            for line in s.derivations() {
                println!("{line}");
            }
            let private: usize = s.tenants.values().map(|t| t.private_models.len()).sum();
            let (models, tenants) = (s.models.len(), s.tenants.len());
            println!(
                "{}: ok ({models} catalogue models, {tenants} tenants, {private} private models; \
                 every tokenizer and ONNX graph opened and checked)",
                config.display()
            );
            Ok(())
        }),
        Command::Lambda { config } => Settings::load(&config).and_then(|settings| {
            tokio::runtime::Runtime::new()?.block_on(embedserve::run::lambda::run(settings))
        }),
        Command::HashKey => hash_key_from_stdin(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key_from_stdin() -> anyhow::Result<()> {
    let mut key = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut key)?;
    // A trailing newline from `echo` or a terminal is not part of the key.
    let key = key.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!key.is_empty(), "no key on stdin");
    println!("{}", embedserve::config::keys::hash_key(key));
    Ok(())
}

/// JSON lines on Lambda or when `EMBEDSERVE_LOG_FORMAT=json` (production), readable text otherwise;
/// `RUST_LOG` filters (default `info`).
fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json || std::env::var("EMBEDSERVE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
}
