//! WUA's search-criteria language: a parser that reports the offending position, and an
//! evaluator over updates.
//!
//! ```text
//! criteria  = andgroup *( "or" andgroup )        ; "or" only at the top level
//! andgroup  = term *( "and" term )
//! term      = "(" andgroup ")" / criterion
//! criterion = property ( "=" / "!=" / "contains" ) value
//! value     = 'string' (with '' for a quote) / [-]digits / *   (* only for DeploymentAction)
//! ```
//! Keywords and property names are case-insensitive; string comparisons are too. Every
//! AND-group without a `DeploymentAction` criterion carries `DeploymentAction='Installation'`.
//! An empty criteria string means `IsInstalled=0 and IsHidden=0`, WUA's documented default.

use std::fmt;

use upkeep_types::{DeploymentAction, HResult, Update, UpdateType};
use uuid::Uuid;

/// The criteria used when none are given.
pub const DEFAULT_CRITERIA: &str = "IsInstalled=0 and IsHidden=0";

/// A criteria string that does not parse or does not make sense (`WU_E_INVALID_CRITERIA`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid search criteria at position {position}: {message}")]
pub struct CriteriaError {
    /// 0-based character offset of the offending token.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl CriteriaError {
    /// Always `WU_E_INVALID_CRITERIA`.
    pub fn hresult(&self) -> HResult {
        HResult::WU_E_INVALID_CRITERIA
    }
}

/// A property that criteria can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// `Type`.
    Type,
    /// `DeploymentAction`.
    DeploymentAction,
    /// `IsAssigned`.
    IsAssigned,
    /// `AutoSelectOnWebSites`.
    AutoSelectOnWebSites,
    /// `BrowseOnly`.
    BrowseOnly,
    /// `UpdateID`.
    UpdateId,
    /// `RevisionNumber`.
    RevisionNumber,
    /// `CategoryIDs`.
    CategoryIds,
    /// `IsInstalled`.
    IsInstalled,
    /// `IsHidden`.
    IsHidden,
    /// `IsPresent`.
    IsPresent,
    /// `RebootRequired`.
    RebootRequired,
}

const PROPERTIES: [(&str, Property); 12] = [
    ("Type", Property::Type),
    ("DeploymentAction", Property::DeploymentAction),
    ("IsAssigned", Property::IsAssigned),
    ("AutoSelectOnWebSites", Property::AutoSelectOnWebSites),
    ("BrowseOnly", Property::BrowseOnly),
    ("UpdateID", Property::UpdateId),
    ("RevisionNumber", Property::RevisionNumber),
    ("CategoryIDs", Property::CategoryIds),
    ("IsInstalled", Property::IsInstalled),
    ("IsHidden", Property::IsHidden),
    ("IsPresent", Property::IsPresent),
    ("RebootRequired", Property::RebootRequired),
];

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `contains`
    Contains,
}

/// A checked criterion.
#[derive(Clone, Debug, PartialEq)]
pub enum Criterion {
    /// `Type = / != 'Software' | 'Driver'`.
    Type(Op, UpdateType),
    /// `DeploymentAction = '…'`; `None` is the wildcard `*`.
    DeploymentAction(Option<DeploymentAction>),
    /// A boolean property `= 0 | 1`.
    Flag(Property, bool),
    /// `UpdateID = / != '…'`.
    UpdateId(Op, Uuid),
    /// `RevisionNumber = n`.
    RevisionNumber(u32),
    /// `CategoryIDs contains '…'`.
    CategoryId(Uuid),
}

/// Parsed criteria: OR of AND-groups.
#[derive(Clone, Debug, PartialEq)]
pub struct Criteria {
    groups: Vec<Vec<Criterion>>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Contains => "contains",
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Word(String),
    Op(Op),
    Str(String),
    Int(i64),
    Star,
    End,
}

struct Lexer<'a> {
    chars: Vec<(usize, char)>,
    i: usize,
    _src: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer {
            chars: src.chars().enumerate().collect(),
            i: 0,
            _src: src,
        }
    }

    fn err(pos: usize, msg: impl Into<String>) -> CriteriaError {
        CriteriaError {
            position: pos,
            message: msg.into(),
        }
    }

    /// Returns (token, position).
    fn next(&mut self) -> Result<(Tok, usize), CriteriaError> {
        while self.i < self.chars.len() && self.chars[self.i].1.is_whitespace() {
            self.i += 1;
        }
        let Some(&(pos, c)) = self.chars.get(self.i) else {
            return Ok((Tok::End, self.chars.len()));
        };
        self.i += 1;
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '=' => Tok::Op(Op::Eq),
            '*' => Tok::Star,
            '!' => {
                if self.chars.get(self.i).map(|c| c.1) == Some('=') {
                    self.i += 1;
                    Tok::Op(Op::Ne)
                } else {
                    return Err(Self::err(pos, "expected != "));
                }
            }
            '\'' => {
                let mut s = String::new();
                loop {
                    match self.chars.get(self.i).map(|c| c.1) {
                        None => return Err(Self::err(pos, "unterminated string")),
                        Some('\'') => {
                            if self.chars.get(self.i + 1).map(|c| c.1) == Some('\'') {
                                s.push('\'');
                                self.i += 2;
                            } else {
                                self.i += 1;
                                break;
                            }
                        }
                        Some(ch) => {
                            s.push(ch);
                            self.i += 1;
                        }
                    }
                }
                Tok::Str(s)
            }
            '-' | '0'..='9' => {
                let mut s = String::from(c);
                while let Some(&(_, d)) = self.chars.get(self.i) {
                    if d.is_ascii_digit() {
                        s.push(d);
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                if let Some(&(_, d)) = self.chars.get(self.i) {
                    if d.is_alphanumeric() || d == '_' {
                        return Err(Self::err(pos, format!("{s}{d}… is not a number")));
                    }
                }
                let n = s
                    .parse::<i64>()
                    .map_err(|_| Self::err(pos, format!("{s} is not a base-10 integer")))?;
                Tok::Int(n)
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&(_, d)) = self.chars.get(self.i) {
                    if d.is_alphanumeric() || d == '_' {
                        s.push(d);
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                if s.eq_ignore_ascii_case("contains") {
                    Tok::Op(Op::Contains)
                } else {
                    Tok::Word(s)
                }
            }
            other => return Err(Self::err(pos, format!("unexpected character {other:?}"))),
        };
        Ok((tok, pos))
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn bump(&mut self) -> Result<(), CriteriaError> {
        let (t, p) = self.lex.next()?;
        self.tok = t;
        self.pos = p;
        Ok(())
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(&self.tok, Tok::Word(s) if s.eq_ignore_ascii_case(w))
    }

    fn criteria(&mut self) -> Result<Vec<Vec<Criterion>>, CriteriaError> {
        let mut groups = vec![self.and_group(0)?];
        while self.is_word("or") {
            self.bump()?;
            groups.push(self.and_group(0)?);
        }
        match self.tok {
            Tok::End => Ok(groups),
            Tok::RParen => Err(Lexer::err(self.pos, "unbalanced ')'")),
            _ => Err(Lexer::err(
                self.pos,
                format!(
                    "expected 'and', 'or' or the end, found {}",
                    describe(&self.tok)
                ),
            )),
        }
    }

    fn and_group(&mut self, depth: usize) -> Result<Vec<Criterion>, CriteriaError> {
        if depth > 64 {
            return Err(Lexer::err(self.pos, "parentheses nested too deeply"));
        }
        let mut out = self.term(depth)?;
        while self.is_word("and") {
            self.bump()?;
            out.extend(self.term(depth)?);
        }
        Ok(out)
    }

    fn term(&mut self, depth: usize) -> Result<Vec<Criterion>, CriteriaError> {
        if self.tok == Tok::LParen {
            self.bump()?;
            let inner = self.and_group(depth + 1)?;
            if self.is_word("or") {
                return Err(Lexer::err(
                    self.pos,
                    "'or' is allowed only at the top level, not inside parentheses",
                ));
            }
            if self.tok != Tok::RParen {
                return Err(Lexer::err(
                    self.pos,
                    format!("expected ')', found {}", describe(&self.tok)),
                ));
            }
            self.bump()?;
            return Ok(inner);
        }
        Ok(vec![self.criterion()?])
    }

    fn criterion(&mut self) -> Result<Criterion, CriteriaError> {
        let name_pos = self.pos;
        let Tok::Word(name) = self.tok.clone() else {
            return Err(Lexer::err(
                self.pos,
                format!("expected a property name, found {}", describe(&self.tok)),
            ));
        };
        let prop = PROPERTIES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                Lexer::err(
                    name_pos,
                    format!(
                        "unknown property {name:?}; known: {}",
                        PROPERTIES.map(|p| p.0).join(", ")
                    ),
                )
            })?;
        self.bump()?;
        let op_pos = self.pos;
        let Tok::Op(op) = self.tok else {
            return Err(Lexer::err(
                self.pos,
                format!("expected =, != or contains, found {}", describe(&self.tok)),
            ));
        };
        self.bump()?;
        let val_pos = self.pos;
        let value = self.tok.clone();
        self.bump()?;
        let allowed: &[Op] = match prop {
            Property::Type | Property::UpdateId => &[Op::Eq, Op::Ne],
            Property::CategoryIds => &[Op::Contains],
            _ => &[Op::Eq],
        };
        if !allowed.contains(&op) {
            let names: Vec<String> = allowed.iter().map(|o| o.to_string()).collect();
            return Err(Lexer::err(
                op_pos,
                format!("{name} takes {}, not {op}", names.join(" or ")),
            ));
        }
        let bad_value = |what: &str| {
            Lexer::err(
                val_pos,
                format!("{name} needs {what}, found {}", describe(&value)),
            )
        };
        Ok(match prop {
            Property::Type => match &value {
                Tok::Str(s) => Criterion::Type(
                    op,
                    UpdateType::from_name(s).ok_or_else(|| bad_value("'Software' or 'Driver'"))?,
                ),
                _ => return Err(bad_value("a string")),
            },
            Property::DeploymentAction => match &value {
                Tok::Star => Criterion::DeploymentAction(None),
                Tok::Str(s) if s == "*" => Criterion::DeploymentAction(None),
                Tok::Str(s) => {
                    let a = DeploymentAction::from_name(s)
                        .filter(|a| *a != DeploymentAction::None)
                        .ok_or_else(|| bad_value("'Installation', 'Uninstallation', 'OptionalInstallation', 'Detection' or *"))?;
                    Criterion::DeploymentAction(Some(a))
                }
                _ => return Err(bad_value("a string")),
            },
            Property::UpdateId => match &value {
                Tok::Str(s) => {
                    Criterion::UpdateId(op, Uuid::parse_str(s).map_err(|_| bad_value("a GUID"))?)
                }
                _ => return Err(bad_value("a GUID string")),
            },
            Property::CategoryIds => match &value {
                Tok::Str(s) => {
                    Criterion::CategoryId(Uuid::parse_str(s).map_err(|_| bad_value("a GUID"))?)
                }
                _ => return Err(bad_value("a GUID string")),
            },
            Property::RevisionNumber => match value {
                Tok::Int(n) if (0..=u32::MAX as i64).contains(&n) => {
                    Criterion::RevisionNumber(n as u32)
                }
                _ => return Err(bad_value("a non-negative integer")),
            },
            _ => match value {
                Tok::Int(0) => Criterion::Flag(prop, false),
                Tok::Int(1) => Criterion::Flag(prop, true),
                _ => return Err(bad_value("0 or 1")),
            },
        })
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Word(w) => format!("{w:?}"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Int(n) => n.to_string(),
        Tok::Star => "'*'".into(),
        Tok::End => "the end".into(),
    }
}

/// WUA's `EscapeString`: doubles single quotes so text can sit inside `'…'`.
pub fn escape_string(s: &str) -> String {
    s.replace('\'', "''")
}

impl Criteria {
    /// Parses and checks a criteria string.
    pub fn parse(src: &str) -> Result<Criteria, CriteriaError> {
        let src = if src.trim().is_empty() {
            DEFAULT_CRITERIA
        } else {
            src
        };
        let mut p = Parser {
            lex: Lexer::new(src),
            tok: Tok::End,
            pos: 0,
        };
        p.bump()?;
        let mut groups = p.criteria()?;
        for g in &mut groups {
            let has_id_eq = g
                .iter()
                .any(|c| matches!(c, Criterion::UpdateId(Op::Eq, _)));
            let has_id_ne = g
                .iter()
                .any(|c| matches!(c, Criterion::UpdateId(Op::Ne, _)));
            if g.iter().any(|c| matches!(c, Criterion::RevisionNumber(_)))
                && (!has_id_eq || has_id_ne)
            {
                return Err(CriteriaError {
                    position: src.to_ascii_lowercase().find("revisionnumber").unwrap_or(0),
                    message:
                        "RevisionNumber must be combined with UpdateID= (and not with UpdateID!=)"
                            .into(),
                });
            }
            if !g
                .iter()
                .any(|c| matches!(c, Criterion::DeploymentAction(_)))
            {
                g.push(Criterion::DeploymentAction(Some(
                    DeploymentAction::Installation,
                )));
            }
        }
        Ok(Criteria { groups })
    }

    /// The AND-groups (after the implicit `DeploymentAction`).
    pub fn groups(&self) -> &[Vec<Criterion>] {
        &self.groups
    }

    /// The update ids the criteria are limited to: every AND-group names one with
    /// `UpdateID=` (so only those entries need looking at); `None` otherwise.
    pub fn pinned_ids(&self) -> Option<Vec<Uuid>> {
        let mut ids = Vec::new();
        for g in &self.groups {
            let id = g.iter().find_map(|c| match c {
                Criterion::UpdateId(Op::Eq, id) => Some(*id),
                _ => None,
            })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Some(ids)
    }

    /// True if `u` matches any AND-group.
    pub fn matches(&self, u: &Update) -> bool {
        self.groups.iter().any(|g| g.iter().all(|c| c.matches(u)))
    }
}

impl Criterion {
    /// True if `u` satisfies this criterion.
    pub fn matches(&self, u: &Update) -> bool {
        match self {
            Criterion::Type(Op::Ne, t) => u.update_type() != *t,
            Criterion::Type(_, t) => u.update_type() == *t,
            Criterion::DeploymentAction(None) => true,
            Criterion::DeploymentAction(Some(a)) => u.deployment_action() == *a,
            Criterion::UpdateId(Op::Ne, id) => u.identity().update_id != *id,
            Criterion::UpdateId(_, id) => u.identity().update_id == *id,
            Criterion::RevisionNumber(n) => u.identity().revision_number == *n,
            Criterion::CategoryId(id) => u.categories().iter().any(|c| c.id == *id),
            Criterion::Flag(p, v) => {
                let actual = match p {
                    Property::IsAssigned => u.is_assigned(),
                    Property::AutoSelectOnWebSites => u.auto_select_on_web_sites(),
                    Property::BrowseOnly => u.browse_only(),
                    Property::IsInstalled => u.is_installed(),
                    Property::IsHidden => u.is_hidden(),
                    Property::IsPresent => u.is_present(),
                    Property::RebootRequired => u.reboot_required(),
                    _ => return false,
                };
                actual == *v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_at(src: &str) -> usize {
        Criteria::parse(src).unwrap_err().position
    }

    #[test]
    fn parses_the_documented_examples() {
        let c = Criteria::parse("IsInstalled=0 and Type='Software' and IsHidden=0").unwrap();
        assert_eq!(c.groups().len(), 1);
        assert_eq!(c.groups()[0].len(), 4, "implicit DeploymentAction added");
        let wsus = "IsInstalled=0 and DeploymentAction='Installation' or IsPresent=1 and DeploymentAction='Uninstallation' or IsInstalled=1 and DeploymentAction='Installation' and RebootRequired=1 or IsInstalled=0 and DeploymentAction='Uninstallation' and RebootRequired=1";
        assert_eq!(Criteria::parse(wsus).unwrap().groups().len(), 4);
        assert!(Criteria::parse("(IsInstalled=0 and IsHidden=0) or (Type='Driver')").is_ok());
        assert!(Criteria::parse("( IsHidden = 1 )").is_ok());
        assert!(Criteria::parse(
            "UpdateID='6e1b7d4a-0000-4000-8000-000000000001' and RevisionNumber=100"
        )
        .is_ok());
        assert!(
            Criteria::parse("CategoryIDs contains '6e1b7d4a-0000-4000-8000-000000000001'").is_ok()
        );
        assert!(Criteria::parse("DeploymentAction=*").is_ok());
        assert!(Criteria::parse("isinstalled=0 AND ishidden=0").is_ok());
        assert!(Criteria::parse("").is_ok());
    }

    #[test]
    fn rejects_with_the_offending_position() {
        assert_eq!(
            err_at("IsInstalled=0 and (IsHidden=0 or Type='Driver')"),
            30
        );
        assert_eq!(err_at("Colour='red'"), 0);
        assert_eq!(err_at("IsInstalled=2"), 12);
        assert_eq!(err_at("IsInstalled!=0"), 11);
        assert_eq!(err_at("Type contains 'Software'"), 5);
        assert_eq!(err_at("Type='Firmware'"), 5);
        assert_eq!(err_at("IsInstalled=0 and"), 17);
        assert_eq!(err_at("IsInstalled=0 or or"), 17);
        assert_eq!(err_at("(IsInstalled=0"), 14);
        assert_eq!(err_at("IsInstalled=0)"), 13);
        assert_eq!(err_at("Type='Software"), 5);
        assert_eq!(err_at("UpdateID='not-a-guid'"), 9);
        assert!(Criteria::parse("RevisionNumber=3").is_err());
        assert!(Criteria::parse(
            "UpdateID!='6e1b7d4a-0000-4000-8000-000000000001' and RevisionNumber=3"
        )
        .is_err());
        assert_eq!(
            Criteria::parse("x").unwrap_err().hresult(),
            HResult::WU_E_INVALID_CRITERIA
        );
    }

    #[test]
    fn escape_string_round_trips_through_the_lexer() {
        let mut lx = Lexer::new("'it''s'");
        assert_eq!(lx.next().unwrap().0, Tok::Str("it's".into()));
        assert_eq!(escape_string("it's"), "it''s");
    }
}
