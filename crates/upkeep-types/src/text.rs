//! Text in signed records: what canonical JSON can carry, multi-line text as lines, and
//! control characters made visible for a terminal.
//!
//! TUF signs canonical JSON (OLPC), which escapes only `"` and `\` and so writes every
//! other character as it is; a control character (U+0000–U+001F) would then stand raw in
//! a string, which no JSON parser accepts — one such record made a whole targets role
//! unreadable. Records therefore hold no control characters at all, and multi-line text
//! (`description`, `release_notes`) is a JSON array of its lines, each line free of them.
//! A python-tuf publisher writes the same: `"description": ["First line.", "", "Third."]`.
//! A one-line text stays a plain string, as every earlier agent wrote it.

use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The first control character of `s` (U+0000–U+001F, U+007F–U+009F: C1 controls such
/// as U+009B, a terminal's one-byte CSI, are as dangerous as an escape), with its position
/// in characters from 1.
pub fn first_control(s: &str) -> Option<(usize, char)> {
    s.chars()
        .enumerate()
        .find(|(_, c)| c.is_control())
        .map(|(i, c)| (i + 1, c))
}

/// The name of a control character for an error: `a tab (U+0009)`, `U+001B`.
pub fn describe_control(c: char) -> String {
    let name = match c {
        '\t' => "a tab ",
        '\n' => "a newline ",
        '\r' => "a carriage return ",
        '\u{1b}' => "an escape ",
        _ => "",
    };
    format!("{name}(U+{:04X})", c as u32)
}

/// Why `s` cannot stand as one line of a record, if it cannot.
pub fn check_line(s: &str) -> Result<(), String> {
    match first_control(s) {
        None => Ok(()),
        Some((at, c)) => Err(format!(
            "holds {} at character {at}; records hold printable text only (canonical JSON cannot carry control characters)",
            describe_control(c)
        )),
    }
}

/// Why `s` cannot stand as multi-line text of a record (lines split at `\n`), if it
/// cannot.
pub fn check_text(s: &str) -> Result<(), String> {
    for (n, line) in lines(s).enumerate() {
        if let Some((at, c)) = first_control(line) {
            return Err(format!(
                "line {} holds {} at character {at}; lines hold printable text only (canonical JSON cannot carry control characters; write a tab as spaces)",
                n + 1,
                describe_control(c)
            ));
        }
    }
    Ok(())
}

fn lines(s: &str) -> std::str::Split<'_, char> {
    s.split('\n')
}

/// `s` with `\r\n` line ends written as `\n` (text as a record carries it).
pub fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n")
}

/// Serde for multi-line text: a plain string when it has one line, else an array of lines;
/// reads either form.
pub mod multiline {
    use super::*;

    /// Writes `s` as a string (one line) or an array of its lines.
    pub fn serialize<S: Serializer>(s: &str, ser: S) -> Result<S::Ok, S::Error> {
        if s.contains('\n') {
            lines(s).collect::<Vec<_>>().serialize(ser)
        } else {
            s.serialize(ser)
        }
    }

    /// Reads a string, or an array of lines joined with `\n`.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            One(String),
            Lines(Vec<String>),
        }
        Ok(match Text::deserialize(de)? {
            Text::One(s) => s,
            Text::Lines(l) => l.join("\n"),
        })
    }
}

/// `s` with every control character written as an escape (`\n`, `\t`, `\e`, `\x7f`,
/// `\u{9b}`), so that text from a record or a server can neither move the cursor, set the
/// title, clear the screen nor forge a row when printed. Backslashes stay as they are, so
/// that escaping twice (a message escaped where it was made, then printed) changes nothing.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Multi-line text for a terminal: each line escaped as by [`escape_controls`], the lines
/// kept as lines (a record's own line breaks are the only ones printed).
pub fn escape_text(s: &str) -> String {
    lines(s)
        .map(|l| escape_controls(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "multiline")]
        d: String,
    }

    #[test]
    fn multiline_round_trips_in_both_forms() {
        let one = T {
            d: "one line".into(),
        };
        assert_eq!(serde_json::to_string(&one).unwrap(), r#"{"d":"one line"}"#);
        let two = T { d: "a\n\nb".into() };
        let json = serde_json::to_string(&two).unwrap();
        assert_eq!(json, r#"{"d":["a","","b"]}"#);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), two);
        assert_eq!(serde_json::from_str::<T>(r#"{"d":"x"}"#).unwrap().d, "x");
        assert!(serde_json::from_str::<T>(r#"{"d":3}"#).is_err());
    }

    #[test]
    fn checks_name_the_character_and_its_place() {
        assert!(check_line("Tools 1.0 — ünïcode").is_ok());
        assert!(check_line("CSI \u{9b}2J").unwrap_err().contains("U+009B"));
        let e = check_line("Tools\t1.0").unwrap_err();
        assert!(e.contains("a tab (U+0009) at character 6"), "{e}");
        assert!(check_text("a\nb\n").is_ok());
        assert!(check_text("a\r\nb")
            .unwrap_err()
            .contains("carriage return"));
        let e = check_text("a\nb\u{1b}[2J").unwrap_err();
        assert!(
            e.contains("line 2 holds an escape (U+001B) at character 2"),
            "{e}"
        );
        assert_eq!(normalize_newlines("a\r\nb"), "a\nb");
    }

    #[test]
    fn escapes_make_every_control_visible() {
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(
            escape_controls("\u{1b}]0;owned\u{7}x\ny\\\u{9b}"),
            "\\e]0;owned\\x07x\\ny\\\\u{9b}"
        );
        let once = escape_controls("a\nb\u{1b}").into_owned();
        assert_eq!(escape_controls(&once), once);
        assert_eq!(escape_text("a\u{1b}\nb"), "a\\e\nb");
    }
}
