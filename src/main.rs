use clap::Parser;
use genosdb_fallback::config::{Cli, Command, Config, LogFormat};
use genosdb_fallback::{daemon, tools};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Loading a million nodes is a million small allocations; mimalloc makes them cheap.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc reads its options from the environment once, before `main` runs.
const LAZY_COMMIT: (&str, &str) = ("MIMALLOC_ARENA_EAGER_COMMIT", "0");

/// Commits arena memory as it is used instead of up front: every peer connection's
/// buffers land in fresh arena space, and eager commit made 1,000 idle peers cost
/// 592 MB of RSS instead of 313 MB (`loadgen connect --peers 1000`). The setting can
/// only be given through the environment, so the process starts itself again once
/// with it set, unless the operator set it. If that fails, it runs as it is.
fn commit_memory_lazily() {
    use std::os::unix::process::CommandExt;
    let (var, value) = LAZY_COMMIT;
    if std::env::var_os(var).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(var, value)
        .exec();
    eprintln!("genosdb-fallback: could not restart with {var}={value}: {err}; going on");
}

fn main() -> ExitCode {
    commit_memory_lazily();
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("genosdb-fallback: invalid .env: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let cfg = match cli.settings.validate() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("genosdb-fallback: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(&cfg);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cfg),
        Command::Export => tools::export(&cfg, std::io::stdout().lock()).map(|n| {
            tracing::info!(nodes = n, "exported");
        }),
        Command::Import { file } => import(&cfg, &file),
        Command::SmAddress => match &cfg.sm_signer {
            Some(signer) => {
                println!("{}", signer.address());
                Ok(())
            }
            None => {
                eprintln!(
                    "genosdb-fallback: SM_KEY is not set: expected a BIP39 mnemonic or a 0x private key"
                );
                return ExitCode::from(2);
            }
        },
        Command::Migrate { to } => tools::migrate(&cfg, to).map(|r| {
            tracing::info!(
                nodes = r.nodes,
                snapshot_bytes = r.snapshot_bytes,
                next_seq = r.next_seq,
                to = ?to,
                "migrated"
            );
        }),
        Command::Backup { file } => tools::backup(&cfg, &file).map(|(nodes, bytes)| {
            tracing::info!(nodes, bytes, file = %file.display(), "backup written");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("genosdb-fallback: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(daemon::run(cfg))
}

fn import(cfg: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let report = if file.as_os_str() == "-" {
        tools::import(cfg, std::io::stdin().lock())?
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
        tools::import(cfg, std::io::BufReader::new(f))?
    };
    tracing::info!(read = report.read, adopted = report.adopted, "imported");
    Ok(())
}

/// Logs go to stderr so that `export` can own stdout.
fn init_logs(cfg: &Config) {
    let mut filter = tracing_subscriber::EnvFilter::new(&cfg.log_filter);
    // nostr-sdk's relay pool logs a relay's messages whole, even at ERROR when they are
    // invalid: a hostile relay would write our logs. The pool logs what matters itself.
    if !cfg.log_filter.contains("nostr_relay_pool")
        && let Ok(quiet) = "nostr_relay_pool=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
