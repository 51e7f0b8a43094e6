//! Output for people (tables) and scripts (`--json`, documented in the README).

use serde_json::{json, Value};
use upkeep::{SearchResult, Update};

use upkeep::view::update_json;

/// Human-readable byte count.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Prints a search result.
/// Filters on a search's result, as PSWindowsUpdate's `Get-WindowsUpdate` offers them.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Filter {
    /// Only updates with this KB article id (KB5001001 or 5001001; repeatable).
    #[arg(long = "kb", value_name = "KB")]
    pub kb: Vec<String>,
    /// Only updates whose title contains this text (any case).
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// Only updates in a category of this name (any case; repeatable).
    #[arg(long = "category", value_name = "NAME")]
    pub category: Vec<String>,
    /// Only updates of this severity: Critical, Important, Moderate, Low (repeatable).
    #[arg(long, value_name = "SEVERITY")]
    pub severity: Vec<String>,
    /// Only updates whose download is at most this size (bytes, or with KB, MB, GB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Only updates whose download is at least this size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub min_size: Option<u64>,
}

/// `123`, `10KB`, `5MB`, `1GB` (powers of 1024) → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let (n, mul) = [
        ("GB", 1u64 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim().to_string(), *m)))
    .unwrap_or((t.clone(), 1));
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?}: expected a size such as 500KB, 50MB or 2GB"))
}

impl Filter {
    /// Whether `u` passes every filter given.
    pub fn matches(&self, u: &Update) -> bool {
        let kb_ok = self.kb.is_empty()
            || self.kb.iter().any(|k| {
                let k = k.trim_start_matches("KB").trim_start_matches("kb");
                u.kb_article_ids()
                    .iter()
                    .any(|x| x.trim_start_matches("KB") == k)
            });
        let title_ok = self
            .title
            .as_ref()
            .is_none_or(|t| u.title().to_lowercase().contains(&t.to_lowercase()));
        let cat_ok = self.category.is_empty()
            || u.categories().iter().any(|c| {
                self.category
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(&c.name))
            });
        let sev_ok = self.severity.is_empty()
            || self
                .severity
                .iter()
                .any(|s| s.eq_ignore_ascii_case(u.msrc_severity()));
        let size = u.max_download_size();
        kb_ok
            && title_ok
            && cat_ok
            && sev_ok
            && self.max_size.is_none_or(|m| size <= m)
            && self.min_size.is_none_or(|m| size >= m)
    }
}

/// Prints every update of `r` (the demo's listing).
#[cfg(feature = "publisher")]
pub fn print_search(r: &SearchResult, json: bool) {
    print_search_filtered(r, json, &Filter::default())
}

/// Prints the updates of `r` that pass `filter`: a table, or JSON.
pub fn print_search_filtered(r: &SearchResult, json: bool, filter: &Filter) {
    let updates: Vec<&Update> = r.updates().iter().filter(|u| filter.matches(u)).collect();
    if json {
        let v = json!({
            "result_code": r.result_code(),
            "updates": updates.iter().map(|u| update_json(u)).collect::<Vec<_>>(),
            "warnings": r.warnings(),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        return;
    }
    for w in r.warnings() {
        crate::logs::warning!("{} [{}]", t(&w.message), w.hresult);
    }
    if updates.is_empty() {
        println!("No updates match.");
        return;
    }
    let rows: Vec<[String; 8]> = updates
        .iter()
        .map(|u| {
            let kb = u
                .kb_article_ids()
                .iter()
                .map(|k| format!("KB{}", k.trim_start_matches("KB")))
                .collect::<Vec<_>>()
                .join(",");
            // D downloaded, I installed, H hidden, R restart required, M mandatory, N not
            // applicable here (listed with --include-not-applicable).
            let flags: String = [
                (u.is_downloaded(), 'D'),
                (u.is_installed(), 'I'),
                (u.is_hidden(), 'H'),
                (u.reboot_required(), 'R'),
                (u.is_mandatory(), 'M'),
                (!u.is_applicable(), 'N'),
            ]
            .iter()
            .map(|(on, c)| if *on { *c } else { '-' })
            .collect();
            [
                u.identity().update_id.to_string(),
                match u.installed_revision() {
                    Some(r) if r < u.identity().revision_number => {
                        format!("{r} → {}", u.identity().revision_number)
                    }
                    _ => u.identity().revision_number.to_string(),
                },
                if kb.is_empty() { "-".into() } else { kb },
                u.update_type().to_string(),
                if u.msrc_severity().is_empty() {
                    "-".into()
                } else {
                    u.msrc_severity().to_string()
                },
                human_bytes(u.max_download_size()),
                flags,
                u.title().to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "REV", "KB", "TYPE", "SEVERITY", "SIZE", "FLAGS", "TITLE",
        ],
        &rows,
    );
    println!(
        "{} update(s){}",
        rows.len(),
        if rows.len() < r.updates().len() {
            format!(" of {} (filtered)", r.updates().len())
        } else {
            String::new()
        }
    );
}

/// `s` as a terminal may show it: every control character of text from a record, a
/// server or the state (titles, KB ids, categories, messages) written as an escape, so
/// that it can neither drive the terminal nor forge a line. `--json` output stays exact.
pub fn t(s: &str) -> std::borrow::Cow<'_, str> {
    upkeep::text::escape_controls(s)
}

/// Prints a table; every cell is escaped with [`t`].
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| t(&c).into_owned()))
        .collect();
    let rows = rows.as_slice();
    let mut widths = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Prints one update in full.
pub fn print_update(u: &Update, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&update_json(u)).expect("JSON")
        );
        return;
    }
    let m = u.metadata();
    let b = &m.installation_behavior;
    let yes = |v: bool| if v { "yes" } else { "no" };
    println!("{}", t(&m.title));
    println!("  id:               {}", m.id);
    println!("  revision:         {}", m.revision);
    if let Some(v) = &m.version {
        println!("  version:          {}", t(v));
    }
    if let Some(svc) = u.service() {
        println!("  service:          {}", t(svc));
    }
    match u.installed_revision() {
        Some(r) if r == m.revision => println!("  installed:        yes"),
        None if u.is_detected() => {
            println!(
                "  installed:        yes, without the agent (detected; not uninstallable here)"
            )
        }
        Some(r) => println!(
            "  installed:        revision {r} (this is an upgrade: {r} → {})",
            m.revision
        ),
        None => println!("  installed:        no"),
    }
    match u.not_applicable_reason() {
        None => println!("  applies:          yes"),
        Some(why) => println!("  applies:          no: {}", t(why)),
    }
    for c in u.applicability_checks() {
        println!("    {} {}", if c.holds { "yes" } else { "no " }, t(&c.rule));
    }
    println!("  type:             {}", m.update_type);
    if !m.severity.is_empty() {
        println!("  severity:         {}", t(&m.severity));
    }
    if !m.kb_article_ids.is_empty() {
        println!(
            "  KB articles:      {}",
            m.kb_article_ids
                .iter()
                .map(|k| format!("KB{}", t(k)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !m.categories.is_empty() {
        println!(
            "  categories:       {}",
            m.categories
                .iter()
                .map(|c| t(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(d) = m.release_date {
        println!("  released:         {}", d.strftime("%Y-%m-%d %H:%M UTC"));
    }
    if let Some(d) = m.deadline {
        println!("  deadline:         {}", d.strftime("%Y-%m-%d %H:%M UTC"));
    }
    println!("  mandatory:        {}", yes(m.mandatory));
    println!("  uninstallable:    {}", yes(m.uninstallable));
    println!("  handler:          {}", m.handler.id());
    println!("  impact:           {}", b.impact);
    println!("  reboot behaviour: {}", b.reboot_behavior);
    println!("  user input:       {}", yes(b.can_request_user_input));
    println!(
        "  EULA:             {}",
        if m.eula.is_some() {
            if u.eula_accepted() {
                "accepted"
            } else {
                "not accepted"
            }
        } else {
            "none"
        }
    );
    if !m.supersedes.is_empty() {
        println!(
            "  supersedes:       {}",
            m.supersedes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("  download size:    {}", human_bytes(u.max_download_size()));
    for c in u.download_contents() {
        println!("    {}  {}", t(&c.path), human_bytes(c.length));
    }
    println!("  hidden:           {}", yes(u.is_hidden()));
    for u in &m.more_info_urls {
        println!("  more info:        {}", t(u));
    }
    if !m.description.is_empty() {
        println!();
        println!("{}", upkeep::text::escape_text(&m.description));
    }
    if !m.release_notes.is_empty() {
        println!();
        println!("Release notes:");
        println!("{}", upkeep::text::escape_text(&m.release_notes));
    }
}

/// Prints the per-update results of a download, install or uninstall: a table, or with
/// `json` `{"result_code", "hresult", ["reboot_required",] "updates": [{"id", "title",
/// "result_code", "hresult"[, "reboot_required"]}]}`. `rows` are (unused, code, hresult)
/// per update; `reboot` is the per-update and overall restart flags when they apply.
/// The `"error"` object of `--json` output: why something failed, and its code.
pub fn error_json(message: &str, hresult: upkeep::HResult) -> Value {
    json!({
        "message": message,
        "hresult": format!("0x{:08X}", hresult.as_u32()),
        "name": hresult.name(),
    })
}

/// `rows`: for each update, why it failed (empty when it did not), its result code and
/// HRESULT.
pub fn print_results(
    what: &str,
    updates: &upkeep::UpdateCollection,
    rows: &[(String, upkeep::OperationResultCode, upkeep::HResult)],
    code: upkeep::OperationResultCode,
    hresult: upkeep::HResult,
    reboot: Option<(&[bool], bool)>,
    json: bool,
) {
    if json {
        let list: Vec<Value> = updates
            .iter()
            .zip(rows)
            .enumerate()
            .map(|(i, (u, (message, c, h)))| {
                let mut v = serde_json::json!({
                    "id": u.identity().update_id,
                    "title": u.title(),
                    "result_code": c,
                    "hresult": format!("0x{:08X}", h.as_u32()),
                });
                if !message.is_empty() {
                    // A success can carry a note (local changes kept), not an error.
                    if *c == upkeep::OperationResultCode::Succeeded {
                        v["message"] = message.as_str().into();
                    } else {
                        v["error"] = error_json(message, *h);
                    }
                }
                if let Some((per, _)) = reboot {
                    v["reboot_required"] = per[i].into();
                }
                v
            })
            .collect();
        let mut v = serde_json::json!({
            "result_code": code,
            "hresult": format!("0x{:08X}", hresult.as_u32()),
            "updates": list,
        });
        if let Some((_, all)) = reboot {
            v["reboot_required"] = all.into();
        }
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        return;
    }
    for (i, (u, (message, c, h))) in updates.iter().zip(rows).enumerate() {
        let extra = if *h == upkeep::HResult::S_OK {
            String::new()
        } else {
            format!(" [{h}]")
        };
        let restart = match reboot {
            Some((per, _)) if per[i] => " (restart required)",
            _ => "",
        };
        println!("{:<20} {}{extra}{restart}", c.to_string(), t(u.title()));
        if !message.is_empty() {
            println!("{:<20}   {}", "", t(message));
        }
    }
    let restart = match reboot {
        Some((_, true)) => " — restart required",
        _ => "",
    };
    println!("{what}: {code}{restart}");
}
