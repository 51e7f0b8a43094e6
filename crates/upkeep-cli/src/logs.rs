//! Where log records go, and in what form: for a person at a terminal (colours only when
//! stderr is one and `NO_COLOR` is unset), for a script (`--json`: every stderr line is a
//! JSON object — log records, panics and the final error alike), or for the journal (under
//! systemd, `JOURNAL_STREAM`: one line per record with its syslog priority as `<N>`, which
//! journald turns into the entry's priority).

use std::io::{IsTerminal, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Human-readable; colours when stderr is a terminal and `NO_COLOR` is unset.
    Text,
    /// One JSON object per line.
    Json,
    /// `<priority>target: message` for the journal.
    Journal,
}

/// Whether stderr is the stream `JOURNAL_STREAM` names (`DEVICE:INODE`): the agent runs
/// under systemd with its output going to the journal.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let fd = std::io::stderr();
    let Ok(m) = std::os::fd::AsFd::as_fd(&fd)
        .try_clone_to_owned()
        .map(std::fs::File::from)
    else {
        return false;
    };
    let Ok(m) = m.metadata() else { return false };
    dev.parse::<u64>().ok() == Some(m.dev()) && ino.parse::<u64>().ok() == Some(m.ino())
}

/// The agent's own log targets (its crates); `-v` and `-vv` raise these, not the
/// dependencies' (HTTP, TLS, SQLite), which stay at warnings until `-vvv`.
const OURS: [&str; 11] = [
    "upkeep",
    "upkeep_cli",
    "upkeep_tuf",
    "upkeep_transfer",
    "upkeep_install",
    "upkeep_store",
    "upkeep_publish",
    "upkeep_job",
    "upkeep_fs",
    "upkeep_types",
    "upkeep_testkit",
];

/// The filter directives: `UPKEEP_LOG` wins; else warnings, errors only with `-q`, the
/// agent's own steps with `-v` (info) and `-vv` (debug), everything's trace with `-vvv`.
fn directives(quiet: bool, verbose: u8) -> String {
    let ours = |level: &str| {
        std::iter::once("warn".to_string())
            .chain(OURS.iter().map(|c| format!("{c}={level}")))
            .collect::<Vec<_>>()
            .join(",")
    };
    match (quiet, verbose) {
        (true, _) => "error".into(),
        (false, 0) => "warn".into(),
        (false, 1) => ours("info"),
        (false, 2) => ours("debug"),
        _ => "trace".into(),
    }
}

fn filter(quiet: bool, verbose: u8) -> EnvFilter {
    if let Ok(f) = std::env::var("UPKEEP_LOG") {
        if let Ok(f) = EnvFilter::try_new(f) {
            return f;
        }
    }
    EnvFilter::new(directives(quiet, verbose))
}

/// Whether stderr is the journal (set by [`init`]): the CLI's own lines then carry
/// syslog priorities, as log records do.
static JOURNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One line of the CLI's own to stderr — `upkeep: warning: …` (priority 4) or
/// `upkeep: error: …` (3) — with its priority prefix (`<4>`) when stderr is the journal.
pub fn say(priority: u8, line: &str) {
    if JOURNAL.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("<{priority}>{line}");
    } else {
        eprintln!("{line}");
    }
}

/// `say(4, "upkeep: warning: …")`.
macro_rules! warning {
    ($($a:tt)*) => { $crate::logs::say(4, &format!("upkeep: warning: {}", format_args!($($a)*))) };
}

/// `say(3, "upkeep: error: …")`.
macro_rules! error {
    ($($a:tt)*) => { $crate::logs::say(3, &format!("upkeep: error: {}", format_args!($($a)*))) };
}

pub(crate) use {error, warning};

/// Installs the logger (and, for JSON, a panic hook that writes JSON). Returns the form.
pub fn init(json: bool, quiet: bool, verbose: u8) -> Form {
    let form = if json {
        Form::Json
    } else if stderr_is_journal() {
        Form::Journal
    } else {
        Form::Text
    };
    JOURNAL.store(form == Form::Journal, std::sync::atomic::Ordering::Relaxed);
    let f = filter(quiet, verbose);
    let _ = match form {
        Form::Text => {
            let ansi = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            tracing_subscriber::fmt()
                .with_env_filter(f)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init()
                .map_err(|_| ())
        }
        Form::Json | Form::Journal => tracing_subscriber::registry()
            .with(Lines { form }.with_filter(f))
            .try_init()
            .map_err(|_| ()),
    };
    if form == Form::Json {
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let v = serde_json::json!({
                "level": "ERROR",
                "target": "panic",
                "message": message,
                "location": info.location().map(|l| format!("{}:{}", l.file(), l.line())),
                "thread": std::thread::current().name(),
            });
            let _ = writeln!(std::io::stderr().lock(), "{v}");
        }));
    }
    form
}

/// A record as one line: JSON, or `<N>` for the journal.
struct Lines {
    form: Form,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.insert(field.name().into(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.insert(field.name().into(), text.into());
        }
    }
}

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        let line = match self.form {
            Form::Json => {
                let mut v = serde_json::Map::new();
                v.insert("time".into(), jiff::Timestamp::now().to_string().into());
                v.insert("level".into(), meta.level().as_str().into());
                v.insert("target".into(), meta.target().into());
                v.insert("message".into(), f.message.into());
                if !f.rest.is_empty() {
                    v.insert("fields".into(), f.rest.into());
                }
                serde_json::Value::Object(v).to_string()
            }
            _ => {
                let prio = match *meta.level() {
                    Level::ERROR => 3,
                    Level::WARN => 4,
                    Level::INFO => 6,
                    _ => 7,
                };
                let fields: Vec<String> = f
                    .rest
                    .iter()
                    .map(|(k, v)| format!("{k}={}", crate::output::t(&v.to_string())))
                    .collect();
                // One record, one line: a newline in a message would start a new entry,
                // an escape sequence would reach the terminal.
                let msg = crate::output::t(&f.message);
                format!(
                    "<{prio}>{}: {msg}{}{}",
                    meta.target(),
                    if fields.is_empty() { "" } else { " " },
                    fields.join(" ")
                )
            }
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verbosity_raises_the_agents_own_targets_not_the_dependencies() {
        assert_eq!(super::directives(false, 0), "warn");
        assert_eq!(super::directives(true, 2), "error");
        let v = super::directives(false, 1);
        assert!(
            v.starts_with("warn,") && v.contains("upkeep=info") && v.contains("upkeep_tuf=info")
        );
        assert!(!v.contains("hyper") && !v.contains("reqwest"));
        let vv = super::directives(false, 2);
        assert!(vv.contains("upkeep_transfer=debug") && vv.starts_with("warn,"));
        assert_eq!(super::directives(false, 3), "trace");
    }
}
