use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wskafka::{Cli, Command, Grants, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token(args) => {
            let grants = Grants {
                publish: args.publish,
                subscribe: args.subscribe,
            };
            println!(
                "{}",
                wskafka::mint(&args.jwt_secret, &args.sub, grants, args.ttl)
            );
            Ok(())
        }
        Command::Serve(config) => {
            let logs = tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr);
            match config.log_format {
                LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
                LogFormat::Json => logs.json().init(),
            }
            wskafka::serve(*config, shutdown_signal())
                .await
                .context("wskafka stopped with an error")
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM (orchestrators).
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
