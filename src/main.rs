use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wskafka::{Cli, Command, Grants, LogFormat};

/// jemalloc, whose background threads give freed memory back to the system within seconds:
/// after a burst of large records, the hub settled 6 MiB above its idle figure plus the
/// recent records, where with the system allocator it kept 20 to 38 MiB more for good
/// (BENCHMARKS.md, "Memory"). It costs about 1.3 KiB more per idle socket.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The heap profiler's allocator, for finding what each socket holds (BENCHMARKS.md,
/// "Memory per socket"); its profile is written when `main` returns.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Token(args) => {
            if let Err(e) = wskafka::check_secret(&args.jwt_secret, "WSKAFKA_JWT_SECRET") {
                eprintln!("wskafka token: {e}");
                return ExitCode::FAILURE;
            }
            let grants = Grants {
                publish: args.publish,
                subscribe: args.subscribe,
                history: args.history,
                online: args.online,
            };
            println!(
                "{}",
                wskafka::mint(&args.jwt_secret, &args.sub, grants, args.ttl)
            );
            ExitCode::SUCCESS
        }
        Command::Serve(config) => {
            #[cfg(feature = "dhat-heap")]
            let _profiler = dhat::Profiler::new_heap();
            let logs = tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr);
            match config.log_format {
                LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
                LogFormat::Json => logs.json().init(),
            }
            match wskafka::serve(*config, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // One line a person can act on: the part, its address, the cause.
                    tracing::error!("cannot run: {e}");
                    ExitCode::FAILURE
                }
            }
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
