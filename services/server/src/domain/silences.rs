//! Silences, with Alertmanager's semantics: matchers over an alert's labels (`=`, `!=`, `=~`,
//! `!~`; regular expressions fully anchored; a missing label is the empty string), a time
//! window, who made one and why. A silence mutes notifications only; it never changes an
//! alert's state, and ending one never deletes it.

use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{OrgId, SilenceId};

/// At most this many matchers in one silence.
pub const MAX_MATCHERS: usize = 32;
/// A label name: a Kubernetes label key is at most 253 + 1 + 63 characters.
pub const MAX_NAME_CHARS: usize = 317;
pub const MAX_VALUE_CHARS: usize = 1024;
pub const MAX_COMMENT_CHARS: usize = 1000;
/// The longest window a silence may have.
pub const MAX_DURATION_MS: i64 = 90 * DAY_MS;
/// How far ahead a silence may start.
pub const MAX_LEAD_MS: i64 = 365 * DAY_MS;
const DAY_MS: i64 = 86_400_000;
/// Compiled-program limit of one matcher's regular expression: ample for alternations of
/// names, small enough that a silence cannot make evaluation slow or large.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum MatchOp {
    /// Equal.
    #[serde(rename = "=")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    NotEq,
    /// Matches the regular expression, anchored at both ends.
    #[serde(rename = "=~")]
    Re,
    /// Does not match the regular expression, anchored at both ends.
    #[serde(rename = "!~")]
    NotRe,
}

/// A matcher as written in a request, a response and the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SilenceMatcher)]
pub struct MatcherSpec {
    /// The label: one of the alert's labels (see `Silence`); a missing label has the value "".
    #[schema(min_length = 1, max_length = 317)]
    pub name: String,
    pub op: MatchOp,
    /// The value, or for `=~` and `!~` a regular expression (Rust `regex` syntax) that must
    /// match the whole value.
    #[schema(max_length = 1024)]
    pub value: String,
}

/// A checked matcher, its regular expression compiled.
#[derive(Debug, Clone)]
pub struct Matcher {
    spec: MatcherSpec,
    regex: Option<Regex>,
}

/// Which part of a matcher is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatcherError {
    Name(&'static str),
    Value(String),
}

impl Matcher {
    pub fn parse(spec: &MatcherSpec) -> Result<Matcher, MatcherError> {
        let name = &spec.name;
        if name.is_empty() {
            return Err(MatcherError::Name("must not be empty"));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(MatcherError::Name("must be at most 317 characters"));
        }
        if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(MatcherError::Name("must not contain white space or control characters"));
        }
        if spec.value.chars().count() > MAX_VALUE_CHARS {
            return Err(MatcherError::Value(format!("must be at most {MAX_VALUE_CHARS} characters")));
        }
        let regex = match spec.op {
            MatchOp::Eq | MatchOp::NotEq => None,
            MatchOp::Re | MatchOp::NotRe => Some(compile(&spec.value).map_err(MatcherError::Value)?),
        };
        Ok(Matcher { spec: spec.clone(), regex })
    }

    pub fn spec(&self) -> &MatcherSpec {
        &self.spec
    }

    /// Whether a label with this value (the empty string when missing) matches.
    pub fn matches_value(&self, value: &str) -> bool {
        match (self.spec.op, &self.regex) {
            (MatchOp::Eq, _) => value == self.spec.value,
            (MatchOp::NotEq, _) => value != self.spec.value,
            (MatchOp::Re, Some(re)) => re.is_match(value),
            (MatchOp::NotRe, Some(re)) => !re.is_match(value),
            (MatchOp::Re | MatchOp::NotRe, None) => unreachable!("parse compiles every regex matcher"),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.spec.name).map_or("", String::as_str))
    }
}

/// Compiles `value` anchored at both ends, as Alertmanager does (`^(?:value)$`). The value is
/// first checked on its own, so it cannot close the group and escape the anchors (`a)|(b`).
fn compile(value: &str) -> Result<Regex, String> {
    let build = |pattern: &str| RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_SIZE_LIMIT).build();
    build(value).and_then(|_| build(&format!("^(?:{value})$"))).map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => "is too large a regular expression".to_owned(),
        // The syntax error's own last line says what is wrong ("error: unclosed group").
        other => {
            let text = other.to_string();
            let why = text.lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or("invalid syntax");
            format!("is not a valid regular expression: {why}")
        }
    })
}

/// The matchers of one silence: at least one, all of which must match.
#[derive(Debug, Clone)]
pub struct Matchers(Vec<Matcher>);

impl Matchers {
    /// Checks every matcher; each problem comes back as (field path, message).
    pub fn parse(specs: &[MatcherSpec]) -> Result<Matchers, Vec<(String, String)>> {
        if specs.is_empty() {
            return Err(vec![("matchers".into(), "must hold at least one matcher".into())]);
        }
        let matchers = Matchers::parse_route(specs)?;
        // Such a silence would mute every alert, even those without the labels it names.
        if matchers.0.iter().all(|m| m.matches_value("")) {
            return Err(vec![("matchers".into(), "must hold at least one matcher that does not match the empty string".into())]);
        }
        Ok(matchers)
    }

    /// Checks matchers as a notification policy takes them: none at all matches every alert.
    pub fn parse_route(specs: &[MatcherSpec]) -> Result<Matchers, Vec<(String, String)>> {
        if specs.len() > MAX_MATCHERS {
            return Err(vec![("matchers".into(), format!("must hold at most {MAX_MATCHERS} matchers"))]);
        }
        let mut matchers = Vec::new();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match Matcher::parse(spec) {
                Ok(m) => matchers.push(m),
                Err(MatcherError::Name(why)) => errors.push((format!("matchers[{i}].name"), why.to_owned())),
                Err(MatcherError::Value(why)) => errors.push((format!("matchers[{i}].value"), why)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Matchers(matchers))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|m| m.matches(labels))
    }

    pub fn specs(&self) -> Vec<MatcherSpec> {
        self.0.iter().map(|m| m.spec().clone()).collect()
    }
}

/// Where a silence stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    /// Its window has not begun.
    Pending,
    /// It mutes the alerts it matches.
    Active,
    /// Its window is over (it ran out, or was expired); kept for the record.
    Expired,
}

impl SilenceState {
    pub fn at(starts_at: i64, ends_at: i64, now: i64) -> SilenceState {
        if ends_at <= now {
            SilenceState::Expired
        } else if starts_at > now {
            SilenceState::Pending
        } else {
            SilenceState::Active
        }
    }
}

/// Who made a silence: the actor's kind (`user`, `api_token`), id, and what it was called then
/// (the user's e-mail, the token's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = SilenceCreator)]
pub struct CreatedBy {
    pub kind: String,
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Silence {
    pub id: SilenceId,
    pub org_id: OrgId,
    pub matchers: Matchers,
    pub starts_at: i64,
    pub ends_at: i64,
    pub comment: String,
    pub created_by: CreatedBy,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Silence {
    pub fn state(&self, now: i64) -> SilenceState {
        SilenceState::at(self.starts_at, self.ends_at, now)
    }

    /// Whether it mutes, at `now`, an alert with these labels (`alerting::matchable_labels`).
    pub fn mutes(&self, labels: &BTreeMap<String, String>, now: i64) -> bool {
        self.state(now) == SilenceState::Active && self.matchers.matches(labels)
    }
}

/// A silence's window from what was asked at `now`: a start in the past is now (as in
/// Alertmanager); the end must be in the future, after the start, and within 90 days of it.
pub fn window(starts_at: Option<i64>, ends_at: i64, now: i64) -> Result<(i64, i64), (&'static str, String)> {
    let starts_at = starts_at.unwrap_or(now).max(now);
    if starts_at - now > MAX_LEAD_MS {
        return Err(("starts_at", "must be at most 365 days ahead".into()));
    }
    if ends_at <= now {
        return Err(("ends_at", "must be in the future".into()));
    }
    if ends_at <= starts_at {
        return Err(("ends_at", "must be after starts_at".into()));
    }
    if ends_at - starts_at > MAX_DURATION_MS {
        return Err(("ends_at", "must be at most 90 days after starts_at".into()));
    }
    Ok((starts_at, ends_at))
}

/// A silence's comment: trimmed, 1 to 1000 characters, no control characters but line breaks
/// and tabs.
pub fn parse_comment(s: &str) -> Result<String, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        Err("must not be empty: say why the alerts are silenced")
    } else if s.chars().count() > MAX_COMMENT_CHARS {
        Err("must be at most 1000 characters")
    } else if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r') {
        Err("must not contain control characters other than line breaks and tabs")
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, op: MatchOp, value: &str) -> MatcherSpec {
        MatcherSpec { name: name.into(), op, value: value.into() }
    }

    fn m(name: &str, op: MatchOp, value: &str) -> Matcher {
        Matcher::parse(&spec(name, op, value)).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_four_operators() {
        let l = labels(&[("env", "prod")]);
        assert!(m("env", MatchOp::Eq, "prod").matches(&l));
        assert!(!m("env", MatchOp::Eq, "pro").matches(&l));
        assert!(m("env", MatchOp::NotEq, "dev").matches(&l));
        assert!(!m("env", MatchOp::NotEq, "prod").matches(&l));
        assert!(m("env", MatchOp::Re, "prod|staging").matches(&l));
        assert!(!m("env", MatchOp::NotRe, "prod|staging").matches(&l));
        assert!(m("env", MatchOp::NotRe, "dev.*").matches(&l));
    }

    #[test]
    fn regular_expressions_match_the_whole_value() {
        let l = labels(&[("cluster", "production-eu")]);
        assert!(!m("cluster", MatchOp::Re, "prod").matches(&l));
        assert!(!m("cluster", MatchOp::Re, "eu").matches(&l));
        assert!(m("cluster", MatchOp::Re, "prod.*").matches(&l));
        // An alternation is anchored as a whole, not only its first and last branches.
        assert!(!m("cluster", MatchOp::Re, "prod|xyz").matches(&l));
        assert!(m("cluster", MatchOp::NotRe, "prod").matches(&l));
    }

    #[test]
    fn a_missing_label_is_the_empty_string() {
        let none = labels(&[]);
        assert!(m("team", MatchOp::Eq, "").matches(&none));
        assert!(m("team", MatchOp::NotEq, "web").matches(&none));
        assert!(!m("team", MatchOp::Re, ".+").matches(&none));
        assert!(m("team", MatchOp::NotRe, ".+").matches(&none));
    }

    #[test]
    fn a_silence_matches_when_all_its_matchers_do() {
        let ms = Matchers::parse(&[spec("cluster", MatchOp::Eq, "prod"), spec("check", MatchOp::Re, "agent|control_plane")]).unwrap();
        assert!(ms.matches(&labels(&[("cluster", "prod"), ("check", "agent")])));
        assert!(!ms.matches(&labels(&[("cluster", "prod"), ("check", "success_rate")])));
        assert!(!ms.matches(&labels(&[("cluster", "dev"), ("check", "agent")])));
    }

    #[test]
    fn matchers_that_would_mute_everything_are_refused() {
        let refused = |specs: &[MatcherSpec]| Matchers::parse(specs).unwrap_err()[0].0.clone();
        assert_eq!(refused(&[]), "matchers");
        assert_eq!(refused(&[spec("env", MatchOp::Re, ".*")]), "matchers");
        assert_eq!(refused(&[spec("env", MatchOp::NotEq, "prod"), spec("team", MatchOp::Eq, "")]), "matchers");
        let too_many: Vec<MatcherSpec> = (0..=MAX_MATCHERS).map(|i| spec(&format!("l{i}"), MatchOp::Eq, "x")).collect();
        assert_eq!(refused(&too_many), "matchers");
        // One matcher that needs a value is enough.
        assert!(Matchers::parse(&[spec("env", MatchOp::Re, ".*"), spec("cluster", MatchOp::Eq, "prod")]).is_ok());
    }

    #[test]
    fn bad_matchers_name_their_field() {
        let errors = Matchers::parse(&[spec("env", MatchOp::Eq, "prod"), spec("env", MatchOp::Re, "(unclosed"), spec("", MatchOp::Eq, "x")]).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["matchers[1].value", "matchers[2].name"]);
        assert!(errors[0].1.starts_with("is not a valid regular expression"), "{errors:?}");
        // A value that would close the anchoring group is refused, not allowed to escape it.
        assert!(Matcher::parse(&spec("env", MatchOp::Re, "a)|(b")).is_err());
        // A regex whose compiled form is huge is refused.
        let huge = Matcher::parse(&spec("env", MatchOp::Re, "(\\w{100}){100}")).unwrap_err();
        assert_eq!(huge, MatcherError::Value("is too large a regular expression".into()));
        assert!(Matcher::parse(&spec("env", MatchOp::Eq, &"x".repeat(MAX_VALUE_CHARS + 1))).is_err());
    }

    #[test]
    fn states_follow_the_window() {
        assert_eq!(SilenceState::at(10, 20, 9), SilenceState::Pending);
        assert_eq!(SilenceState::at(10, 20, 10), SilenceState::Active);
        assert_eq!(SilenceState::at(10, 20, 19), SilenceState::Active);
        assert_eq!(SilenceState::at(10, 20, 20), SilenceState::Expired);
    }

    #[test]
    fn windows_are_checked() {
        let now = 1_000_000;
        assert_eq!(window(None, now + 5, now), Ok((now, now + 5)));
        assert_eq!(window(Some(now - 500), now + 5, now), Ok((now, now + 5)), "a start in the past is now");
        assert_eq!(window(Some(now + 10), now + 5, now).unwrap_err().0, "ends_at");
        assert_eq!(window(None, now, now).unwrap_err().0, "ends_at");
        assert_eq!(window(None, now + MAX_DURATION_MS + 1, now).unwrap_err().0, "ends_at");
        assert_eq!(window(Some(now + MAX_LEAD_MS + 1), now + MAX_LEAD_MS + 2, now).unwrap_err().0, "starts_at");
    }

    #[test]
    fn comments_are_required_and_bounded() {
        assert_eq!(parse_comment("  maintenance\nwindow "), Ok("maintenance\nwindow".into()));
        assert!(parse_comment(" ").is_err());
        assert!(parse_comment(&"x".repeat(MAX_COMMENT_CHARS + 1)).is_err());
        assert!(parse_comment("bell\u{7}").is_err());
    }
}
