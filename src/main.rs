use clap::{CommandFactory, FromArgMatches};
use genosdb_fallback::config::{
    Cli, Command, Config, DEFAULT_FORWARD_MS, LogFormat, RawSettings, StorageKind,
};
use genosdb_fallback::daemon::{self, tools};
use genosdb_fallback::redact::{self, Scrub};
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
    say(format_args!(
        "genosdb-fallback: could not restart with {var}={value}: {err}; going on"
    ));
}

fn main() -> ExitCode {
    commit_memory_lazily();
    if let Err(e) = genosdb_fallback::dotenv::load() {
        say(format_args!("genosdb-fallback: invalid .env: {e}"));
        return ExitCode::from(2);
    }
    let cli = match Cli::from_arg_matches(&cli().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let secrets = log_secrets(&cli.settings);
    // Errors printed to stderr pass through the same mask as the logs.
    let mask = Scrub::new((), secrets.clone());
    let cfg = match cli.settings.validate() {
        Ok(cfg) => cfg,
        Err(e) => {
            say(format_args!(
                "genosdb-fallback: {}",
                mask.apply(&e.to_string())
            ));
            return ExitCode::from(2);
        }
    };
    init_logs(&cfg, secrets);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cfg),
        Command::Export => tools::export(&cfg, std::io::stdout().lock()).map(|n| {
            tracing::info!(nodes = n, "exported");
        }),
        Command::Import { file } => import(&cfg, &file),
        Command::Query(args) => {
            genosdb_fallback::daemon::query::run(&cfg, &args, std::io::stdout().lock())
        }
        Command::SmAddress => match &cfg.sm.signer {
            Some(signer) => {
                use std::io::Write;
                writeln!(std::io::stdout(), "{}", signer.address()).map_err(anyhow::Error::from)
            }
            None => {
                say(format_args!(
                    "genosdb-fallback: SM_KEY is not set: expected a BIP39 mnemonic or a 0x private key"
                ));
                return ExitCode::from(2);
            }
        },
        Command::Migrate { to } => tools::migrate(&cfg, to).map(|r| {
            tracing::info!(
                nodes = r.nodes,
                snapshot_bytes = r.snapshot_bytes,
                next_seq = r.next_seq,
                to = match to {
                    StorageKind::Files => "files",
                    StorageKind::Postgres => "postgres",
                },
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
            say(format_args!(
                "genosdb-fallback: {}",
                mask.apply(&format!("{e:#}"))
            ));
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

/// The command line: every setting's help shows its default (taken from what an empty
/// configuration validates to, so the two cannot drift apart), and each subcommand's
/// help shows its own arguments, not the daemon's settings again.
fn cli() -> clap::Command {
    let defaults = genosdb_fallback::config::RawSettings::default()
        .validate()
        .expect("the defaults validate");
    let cmd = Cli::command().mut_args(|arg| {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            return arg;
        };
        let Some(default) = shown_default(&defaults, env) else {
            return arg;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.help(format!("{help} [default: {default}]"))
    });
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names.into_iter().fold(cmd, |cmd, name| {
        cmd.mut_subcommand(name, |sub| {
            let args = if sub.get_positionals().next().is_some() {
                "\nArguments:\n{positionals}\n"
            } else {
                ""
            };
            sub.help_template(format!(
                "{{about-with-newline}}\n{{usage-heading}} {{usage}}\n{args}\n\
                 The daemon's settings (DB_NAME, DATA_DIR, DATABASE_URL, ...) apply here too, as\n\
                 environment variables or as flags: see genosdb-fallback --help.\n"
            ))
        })
    })
}

/// What a setting is when it is not given, as `--help` shows it.
fn shown_default(c: &Config, env: &str) -> Option<String> {
    let num = |v: f64| v.to_string();
    let on = |b: bool| if b { "true" } else { "false" }.to_owned();
    Some(match env {
        "DB_NAME" => c.db_name.clone(),
        "RTC_ENABLED" => on(c.rtc.enabled),
        "RELAY_URLS" => "GenosDB's 8 public relays; set but empty: none".into(),
        "ICE_SERVERS" => "GenosDB's 4 STUN servers; set but empty: none".into(),
        "ROOM_PRESENCE" => on(c.rtc.room_presence),
        "RELAY" => on(c.relay.enabled),
        "RELAY_MAX_CONNECTIONS" => c.relay.limits.max_connections.to_string(),
        "RELAY_MAX_PER_IP" => c.relay.limits.max_per_ip.to_string(),
        "RELAY_MAX_MESSAGE_BYTES" => c.relay.limits.max_message_bytes.to_string(),
        "RELAY_EVENTS_PER_SEC" => num(c.relay.limits.events_per_sec),
        "RELAY_EVENT_BURST" => num(c.relay.limits.event_burst),
        "RELAY_MAX_SUBS" => c.relay.limits.max_subscriptions.to_string(),
        "MAX_PEERS" => c.rtc.peer_limits.max_peers.to_string(),
        "PEER_MSG_RATE" => num(c.rtc.peer_limits.msg_rate),
        "PEER_MSG_BURST" => num(c.rtc.peer_limits.msg_burst),
        "PEER_BYTES_RATE" => num(c.rtc.peer_limits.bytes_rate),
        "PEER_BYTES_BURST" => num(c.rtc.peer_limits.bytes_burst),
        "MAX_MESSAGE_BYTES" => c.rtc.max_message_bytes.to_string(),
        "MAX_VALUE_BYTES" => c.rtc.max_value_bytes.to_string(),
        "HOST" => c.http.host.to_string(),
        "PORT" => c.http.port.to_string(),
        "SM_ENABLED" => on(c.sm.enabled),
        "CELLS" => on(c.rtc.cells.is_some()),
        "CELL_SIZE" => genosdb_fallback::rtc::cells::DEFAULT_CELL_SIZE.to_string(),
        "FORWARD_OPS" => on(c.rtc.forward.is_some()),
        "FORWARD_MS" => DEFAULT_FORWARD_MS.to_string(),
        "SM_STRICT" => on(c.sm.strict),
        "DATA_DIR" => c.storage.data_dir.display().to_string(),
        "DATABASE_URL" => "unset: the graph lives in DATA_DIR".into(),
        "FLUSH_MS" => c.storage.flush_every.as_millis().to_string(),
        "OPLOG_SIZE" => c.storage.oplog_size.to_string(),
        "COMPACT_BYTES" => c.storage.compact_bytes.to_string(),
        "LOG_FORMAT" => match c.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .into(),
        "RUST_LOG" => c.log.filter.clone(),
        _ => return None,
    })
}

/// Logs go to stderr so that `export` can own stdout.
fn init_logs(cfg: &Config, secrets: Vec<String>) {
    let mut filter = tracing_subscriber::EnvFilter::new(&cfg.log.filter);
    // nostr-sdk's relay pool logs a relay's messages whole, even at ERROR when they are
    // invalid: a hostile relay would write our logs. The pool logs what matters itself.
    if !cfg.log.filter.contains("nostr_relay_pool")
        && let Ok(quiet) = "nostr_relay_pool=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // tracing-subscriber reports a failed write with `eprintln!`, which panics when
        // stderr is a closed pipe: logging must never take the daemon down.
        .log_internal_errors(false)
        .with_writer(Scrub::new(|| LossyStderr, secrets));
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// stderr that never fails: a log line that cannot be written (the reader of a pipe
/// went away, a full disk under a redirect) is dropped, and the daemon goes on.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `eprintln!` without its panic on a closed stderr.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What no log line may show: the secrets the settings hold (from the environment,
/// `.env` or flags), and the credentials inside relay, ICE and database URLs. The log
/// writer masks them (see redact::Scrub).
fn log_secrets(raw: &RawSettings) -> Vec<String> {
    let field = |v: &Option<String>| v.as_deref().unwrap_or("").trim().to_owned();
    let mut secrets = vec![
        field(&raw.password),
        field(&raw.admin_token),
        field(&raw.turn_credential),
        field(&raw.sm_key),
        field(&raw.sm_key).trim_start_matches("0x").to_owned(),
    ];
    let lists = [&raw.relay_urls, &raw.turn_urls, &raw.ice_servers];
    let urls = lists
        .into_iter()
        .flat_map(|list| list.as_deref().unwrap_or("").split(','))
        .chain(raw.database_url.as_deref());
    for url in urls {
        secrets.extend(
            redact::secret_parts(url.trim())
                .into_iter()
                .map(str::to_owned),
        );
    }
    secrets
}
