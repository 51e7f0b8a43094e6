//! `upkeep man`: the manual pages, generated from the command definitions, with the
//! sections a manual needs beyond them (exit status, files, environment, configuration,
//! examples).

use std::io::Write;
use std::path::Path;

/// The sections after the generated ones, in roff.
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
success
.TP
\fB1\fR
the operation failed (network, repository refused, I/O); \fBverify\fR: a path is not as installed
.TP
\fB2\fR
bad usage or bad input: arguments, criteria, configuration, manifests, unknown ids
.TP
\fB3\fR
partial success (SucceededWithErrors)
.TP
\fB4\fR
aborted
.TP
\fB5\fR
success, and a restart is required
.SH FILES
.TP
\fI/var/lib/upkeep\fR
the state directory (\fB\-\-state\-dir\fR, mode 0700): trusted metadata, the content cache, the state database \fIstate.db\fR, the install work tree
.TP
\fI/etc/upkeep/config.toml\fR
a configuration file, given with \fB\-\-config\fR or \fBUPKEEP_CONFIG\fR
.TP
\fIDIR/keys/\fR
a repository's private keys (mode 0600); never serve them
.SH ENVIRONMENT
.TP
\fBUPKEEP_CONFIG\fR
the configuration file
.TP
\fBUPKEEP_REPOSITORY\fR, \fBUPKEEP_TRUSTED_ROOT\fR, \fBUPKEEP_STATE_DIR\fR, \fBUPKEEP_INSTALL_ROOT\fR
as the options of the same names
.TP
\fBUPKEEP_PARALLEL_DOWNLOADS\fR, \fBUPKEEP_MIN_TRANSFER_RATE\fR, \fBUPKEEP_CONNECT_TIMEOUT_SECONDS\fR, \fBUPKEEP_RESPONSE_TIMEOUT_SECONDS\fR, \fBUPKEEP_CACHE_MAX_BYTES\fR, \fBUPKEEP_KEEP_DOWNLOADS\fR
as the configuration settings of the same names, in lower case
.TP
\fBUPKEEP_LOG\fR
the log filter (an EnvFilter, e.g. \fBupkeep_tuf=debug\fR); it wins over \fB\-q\fR and \fB\-v\fR
.TP
\fBNO_COLOR\fR
no colours
.TP
\fBJOURNAL_STREAM\fR
set by systemd: log lines then carry syslog priorities
.SH CONFIGURATION
A TOML file; the environment overrides it and options override both:
.PP
.nf
repository = "https://updates.example/"
trusted_root = "/etc/upkeep/root.json"
state_dir = "/var/lib/upkeep"
install_root = "/"
parallel_downloads = 8
min_transfer_rate = 1024
connect_timeout_seconds = 10
response_timeout_seconds = 30
cache_max_bytes = 2000000000

[[services]]
name = "internal"
url = "https://updates.internal.example/"
trusted_root = "/etc/upkeep/internal-root.json"
.fi
.SH EXAMPLES
.nf
upkeep repo init ./repo
upkeep repo add ./repo \-\-title "Tools 1.0" \-\-payload tools.tar \-\-handler files
upkeep repo serve ./repo \-\-listen 127.0.0.1:8080 &
upkeep \-\-repo http://127.0.0.1:8080/ \-\-trusted\-root ./repo/metadata/1.root.json search
upkeep install \-\-all \-\-accept\-eula
upkeep verify
upkeep history \-\-json
.fi
"#;

/// `upkeep(1)` with the extra sections.
fn main_page(w: &mut dyn Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    // As `generate_to` writes the pages: no `help` subcommand, so no page it lacks is named.
    let man = clap_mangen::Man::new(crate::Cli::command().disable_help_subcommand(true));
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(EXTRA.as_bytes())?;
    man.render_version_section(w)
}

/// Prints `upkeep(1)`, or with `out` writes it and one page per verb
/// (`upkeep-search.1`, `upkeep-repo-add.1`, …), which it refers to, into that directory.
pub fn run(out: Option<&Path>) -> std::io::Result<()> {
    use clap::CommandFactory;
    match out {
        None => main_page(&mut std::io::stdout().lock()),
        Some(dir) => {
            upkeep_fs::create_dir_all(dir)?;
            clap_mangen::generate_to(crate::Cli::command(), dir)?;
            let mut f = upkeep_fs::create(dir.join("upkeep.1"))?;
            main_page(&mut f)?;
            f.flush()
        }
    }
}
