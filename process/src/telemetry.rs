//! What a process says to people: structured logs (text or JSON lines on stderr, filtered by
//! `RUST_LOG`), a fatal error reported exactly once in the chosen format, and stdout output that
//! ends quietly when the reader has gone (`| head`).

use std::io::Write;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers; fatal errors included.
    Json,
}

/// The `--log-format` flag every binary takes, before or after its subcommand
/// (`#[command(flatten)]` it into the binary's command line).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr (json: every stderr line is a JSON object, fatal errors included)
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` (default `info`) picks what is logged; it is the one
/// variable outside `projector-config` that a Projector process reads.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second init (tests that call it twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // A job's lines carry its `job` span (run, org, attempt) as one "span" object.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
}

/// Reports the error that ends the process, once: a JSON log line under `--log-format json`,
/// otherwise `error: …` on stderr (with the whole chain when `error` is an anyhow error printed
/// with `{:#}` by the caller).
pub fn report_fatal(error: &dyn std::fmt::Display) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::error!(error = %error, "fatal"),
        _ => eprintln!("error: {error}"),
    }
}

/// Writes `text` to stdout. A reader that went away (`| head -1`) ends the output quietly; it is
/// not an error of the command. Returns false when the output was cut short.
pub fn print(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(e) => {
            report_fatal(&format!("cannot write to stdout: {e}"));
            false
        }
    }
}

/// Parses the command line. A usage error (an unknown flag, a missing argument) under
/// `--log-format json` is reported as one JSON log line, like every other error of the process,
/// and exits 2; `--help` and `--version` print as usual.
pub fn parse_args<C: clap::Parser>() -> C {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match C::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && wants_json(&args) => {
            init(LogFormat::Json);
            let message = e.render().to_string();
            let first = message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            tracing::error!(error = %first, usage = %message.trim_end(), "fatal: bad command line");
            std::process::exit(2)
        }
        Err(e) => e.exit(),
    }
}

/// Whether the command line asks for JSON logs, read before clap has accepted it.
fn wants_json(args: &[std::ffi::OsString]) -> bool {
    args.windows(2).any(|w| w[0] == "--log-format" && w[1] == "json") || args.iter().any(|a| a == "--log-format=json")
}
