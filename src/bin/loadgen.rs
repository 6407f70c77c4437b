//! `loadgen`: N Rust peers against one genosdb-fallback daemon on 127.0.0.1; prints one
//! JSON line per figure as it is measured and a table at the end. See docs/DEVELOPMENT.md,
//! *Load generator*.

use clap::Parser;
use genosdb_fallback::loadgen::{Cli, Scenario, scenarios, worker};
use std::process::ExitCode;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,rtc=error".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Scenario::Worker(args) => worker::run(args).await,
            scenario => scenarios::run(scenario).await.map(|figures| {
                println!("\n{}", figures.table());
            }),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
