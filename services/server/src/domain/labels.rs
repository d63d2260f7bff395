//! Kubernetes-compatible cluster labels: key/value validation plus parsing and
//! matching of label selector strings such as `env in (prod, staging),!legacy`.
//! Rules and matching semantics follow `k8s.io/apimachinery` labels.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

pub(crate) const MAX_LABELS: usize = 64;
pub(crate) const MAX_REQUIREMENTS: usize = 20;
const MAX_NAME_LEN: usize = 63;
const MAX_PREFIX_LEN: usize = 253;
/// Longest excerpt of user input quoted in an error message.
const SNIPPET: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LabelError {
    pub message: String,
}

macro_rules! fail {
    ($($arg:tt)*) => { return Err(LabelError { message: format!($($arg)*) }) };
}

/// Quotes `s` for an error message, truncating long input (keeps the head).
fn quote(s: &str) -> String {
    match s.char_indices().nth(SNIPPET) {
        Some((i, _)) => format!("{:?}", format!("{}…", &s[..i])),
        None => format!("{s:?}"),
    }
}

/// Quotes `s` for an error message, truncating long input (keeps the tail).
fn quote_tail(s: &str) -> String {
    let n = s.chars().count();
    match s.char_indices().nth(n.saturating_sub(SNIPPET)) {
        Some((i, _)) if i > 0 => format!("{:?}", format!("…{}", &s[i..])),
        _ => format!("{s:?}"),
    }
}

#[derive(Clone, Copy)]
enum Charset {
    /// Label names and values: `[-_.A-Za-z0-9]`.
    Name,
    /// DNS-1123: `[-a-z0-9]`.
    Dns,
}

impl Charset {
    fn allows(self, c: char) -> bool {
        match self {
            Charset::Name => c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
            Charset::Dns => c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Charset::Name => "A-Z, a-z, 0-9, '-', '_', '.'",
            Charset::Dns => "a-z, 0-9, '-'",
        }
    }
}

/// 1..=`max` characters from `set`, with an ASCII alphanumeric at both ends.
fn check_word(subject: &str, s: &str, max: usize, set: Charset) -> Result<(), LabelError> {
    if s.is_empty() {
        fail!("{subject} must not be empty");
    }
    if let Some(c) = s.chars().find(|&c| !set.allows(c)) {
        let allowed = set.describe();
        fail!("{subject} contains invalid character {c:?} (allowed: {allowed})");
    }
    if s.len() > max {
        fail!("{subject} must be at most {max} characters");
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !s.starts_with(alnum) || !s.ends_with(alnum) {
        fail!("{subject} must start and end with an alphanumeric character");
    }
    Ok(())
}

/// Kubernetes rules: key = optional prefix (a DNS-1123 subdomain, <=253 chars) + "/" + name (<=63 chars, [A-Za-z0-9] at both ends, [-_.A-Za-z0-9] inside, non-empty). value: empty or <=63 chars with the same name rules.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let q = quote(key);
    let Some((prefix, name)) = key.split_once('/') else {
        let subject = format!("label key {q}");
        return check_word(&subject, key, MAX_NAME_LEN, Charset::Name);
    };
    if name.contains('/') {
        fail!("label key {q} must contain at most one '/'");
    }
    if prefix.is_empty() {
        fail!("label key {q} has an empty prefix before '/'");
    }
    if prefix.len() > MAX_PREFIX_LEN {
        fail!("label key {q} prefix must be at most {MAX_PREFIX_LEN} characters");
    }
    for segment in prefix.split('.') {
        let subject = format!("label key {q} prefix segment {}", quote(segment));
        check_word(&subject, segment, usize::MAX, Charset::Dns)?;
    }
    let subject = format!("label key {q} name part");
    check_word(&subject, name, MAX_NAME_LEN, Charset::Name)
}

/// A label value: empty, or the same rules as a key's name part.
pub fn validate_value(value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Ok(());
    }
    let subject = format!("label value {}", quote(value));
    check_word(&subject, value, MAX_NAME_LEN, Charset::Name)
}

/// Validates every key and value, and that there are at most 64 labels.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        let n = labels.len();
        fail!("too many labels: {n} (at most {MAX_LABELS} allowed)");
    }
    for (key, value) in labels {
        validate_key(key)?;
        if let Err(e) = validate_value(value) {
            fail!("label {}: {}", quote(key), e.message);
        }
    }
    Ok(())
}

/// DNS-1123 label: 1..=63 chars, lowercase a-z0-9 and '-', alphanumeric at both ends.
pub fn validate_dns1123_label(name: &str) -> Result<(), LabelError> {
    let subject = format!("name {}", quote(name));
    check_word(&subject, name, MAX_NAME_LEN, Charset::Dns)
}

/// Most items in a comma-separated list of namespaces.
pub const MAX_NAMESPACE_LIST: usize = 100;

/// A comma-separated list of namespaces (DNS-1123 labels): empty items are skipped, at most
/// [`MAX_NAMESPACE_LIST`] items, no white space. Sorted, without duplicates.
pub fn parse_namespace_list(list: &str) -> Result<Vec<&str>, LabelError> {
    let items: Vec<&str> = list.split(',').collect();
    if items.len() > MAX_NAMESPACE_LIST {
        fail!("at most {MAX_NAMESPACE_LIST} comma-separated namespaces");
    }
    let mut names: Vec<&str> = items.into_iter().filter(|n| !n.is_empty()).collect();
    for n in &names {
        validate_dns1123_label(n)?;
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key).map(String::as_str);
        let in_list = |list: &[String]| value.is_some_and(|v| list.iter().any(|x| x == v));
        match &self.op {
            Op::Equals(v) => value == Some(v.as_str()),
            Op::NotEquals(v) => value != Some(v.as_str()),
            Op::In(list) => in_list(list),
            Op::NotIn(list) => !in_list(list),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// True when every requirement matches (an empty selector matches everything).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl std::str::FromStr for Selector {
    type Err = LabelError;

    fn from_str(input: &str) -> Result<Self, LabelError> {
        let mut p = Parser { input, pos: 0 };
        let mut requirements = Vec::new();
        if p.peek().is_none() {
            return Ok(Selector::default());
        }
        loop {
            if requirements.len() == MAX_REQUIREMENTS {
                fail!("selector has too many requirements (at most {MAX_REQUIREMENTS} allowed)");
            }
            requirements.push(p.requirement()?);
            match p.next() {
                None => return Ok(Selector { requirements }),
                Some((Tok::Comma, ..)) => {}
                other => return p.unexpected(other, "',' or end of selector"),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    Comma,
    Open,
    Close,
    Eq,
    NotEq,
    Bang,
}

/// A token with its byte span in the input.
type Token<'a> = (Tok<'a>, usize, usize);

/// Kubernetes only treats ASCII whitespace as a separator.
fn is_space(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// Hand-written lexer + recursive-descent parser over the selector string.
struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token<'a>> {
        let rest = &self.input[self.pos..];
        let start = self.input.len() - rest.trim_start_matches(is_space).len();
        let rest = &self.input[start..];
        let (tok, len) = if rest.starts_with("!=") {
            (Tok::NotEq, 2)
        } else if rest.starts_with("==") {
            (Tok::Eq, 2)
        } else {
            match rest.chars().next()? {
                ',' => (Tok::Comma, 1),
                '(' => (Tok::Open, 1),
                ')' => (Tok::Close, 1),
                '=' => (Tok::Eq, 1),
                '!' => (Tok::Bang, 1),
                _ => {
                    let len = rest.find(|c: char| is_space(c) || ",()=!".contains(c)).unwrap_or(rest.len());
                    (Tok::Ident(&rest[..len]), len)
                }
            }
        };
        Some((tok, start, start + len))
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let t = self.peek()?;
        self.pos = t.2;
        Some(t)
    }

    /// Error for `found` (None = end of input) where `expected` should have been.
    fn unexpected<T>(&self, found: Option<Token<'a>>, expected: &str) -> Result<T, LabelError> {
        let Some((_, start, end)) = found else {
            let before = quote_tail(self.input.trim_end_matches(is_space));
            fail!("unexpected end of selector after {before}, expected {expected}");
        };
        let tok = quote(&self.input[start..end]);
        let before = self.input[..start].trim_end_matches(is_space);
        if before.is_empty() {
            fail!("unexpected {tok} at start of selector, expected {expected}");
        }
        let before = quote_tail(before);
        fail!("unexpected {tok} after {before}, expected {expected}");
    }

    fn requirement(&mut self) -> Result<Requirement, LabelError> {
        let (key, negated) = match self.next() {
            Some((Tok::Bang, ..)) => match self.next() {
                Some((Tok::Ident(key), ..)) => (key, true),
                other => return self.unexpected(other, "a label key after '!'"),
            },
            Some((Tok::Ident(key), ..)) => (key, false),
            other => return self.unexpected(other, "a label key"),
        };
        validate_key(key)?;
        let op = if negated { Op::DoesNotExist } else { self.operator()? };
        Ok(Requirement { key: key.to_owned(), op })
    }

    /// The operator and operand(s) after a key; nothing at all means `Exists`.
    fn operator(&mut self) -> Result<Op, LabelError> {
        let peeked = self.peek();
        Ok(match peeked {
            None | Some((Tok::Comma, ..)) => Op::Exists,
            Some((Tok::Eq, ..)) => Op::Equals(self.skip().value()?),
            Some((Tok::NotEq, ..)) => Op::NotEquals(self.skip().value()?),
            Some((Tok::Ident("in"), ..)) => Op::In(self.skip().list()?),
            Some((Tok::Ident("notin"), ..)) => Op::NotIn(self.skip().list()?),
            _ => return self.unexpected(peeked, "an operator (=, ==, !=, in, notin) or ','"),
        })
    }

    fn skip(&mut self) -> &mut Self {
        self.next();
        self
    }

    /// A value after `=`/`!=`; as in Kubernetes, a missing value means "".
    fn value(&mut self) -> Result<String, LabelError> {
        let peeked = self.peek();
        match peeked {
            None | Some((Tok::Comma, ..)) => Ok(String::new()),
            Some((Tok::Ident(v), ..)) => {
                self.next();
                validate_value(v)?;
                Ok(v.to_owned())
            }
            _ => self.unexpected(peeked, "a value"),
        }
    }

    /// `( v1, v2, ... )` with at least one value.
    fn list(&mut self) -> Result<Vec<String>, LabelError> {
        match self.next() {
            Some((Tok::Open, ..)) => {}
            other => return self.unexpected(other, "'(' starting a value list"),
        }
        let mut values = Vec::new();
        loop {
            let v = match self.next() {
                Some((Tok::Ident(v), ..)) => v,
                other => return self.unexpected(other, "a value"),
            };
            validate_value(v)?;
            values.push(v.to_owned());
            match self.next() {
                Some((Tok::Comma, ..)) => {}
                Some((Tok::Close, ..)) => return Ok(values),
                other => return self.unexpected(other, "',' or ')'"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s:?} rejected: {e}"))
    }

    fn parse_err(s: &str) -> String {
        match s.parse::<Selector>() {
            Ok(parsed) => panic!("{s:?} accepted as {parsed:?}"),
            Err(e) => e.message,
        }
    }

    fn key_err(key: &str) -> String {
        validate_key(key).unwrap_err().message
    }

    #[test]
    fn keys() {
        let long_prefix = format!("{}.com", "a".repeat(249));
        for ok in "app a A_b-c.D9 example.com/app app.kubernetes.io/name x-1/y".split(' ') {
            assert_eq!(validate_key(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(validate_key(&"k".repeat(63)), Ok(()));
        assert_eq!(validate_key(&format!("{long_prefix}/n")), Ok(()));
        let e = key_err("-bad");
        assert_eq!(e, r#"label key "-bad" must start and end with an alphanumeric character"#);
        for (bad, why) in [
            ("", "must not be empty"),
            ("bad-", "must start and end"),
            ("a b", "invalid character ' '"),
            ("clé", "invalid character 'é'"),
            ("a/b/c", "at most one '/'"),
            ("/a", "empty prefix"),
            ("a/", "name part must not be empty"),
            ("Example.com/a", "invalid character 'E'"),
            ("a..b/c", "segment \"\" must not be empty"),
            ("-a.com/c", "prefix segment \"-a\" must start and end"),
            ("a_b.com/c", "invalid character '_'"),
            ("example.com/.x", "name part must start and end"),
        ] {
            assert!(key_err(bad).contains(why), "{bad:?}: {}", key_err(bad));
        }
        assert!(key_err(&"k".repeat(64)).contains("at most 63"));
        assert!(key_err(&format!("a{long_prefix}/n")).contains("at most 253"));
    }

    #[test]
    fn values_and_label_sets() {
        for ok in ["", "v1", "A.b_c-9", &"v".repeat(63)] {
            assert_eq!(validate_value(ok), Ok(()), "{ok:?}");
        }
        for bad in ["-v", "v.", "a b", "x/y", "ü", &"v".repeat(64)] {
            assert!(validate_value(bad).is_err(), "{bad:?}");
        }
        let ok = labels(&[("env", "prod"), ("a.io/team", "")]);
        assert_eq!(validate_labels(&ok), Ok(()));
        let e = validate_labels(&labels(&[("env", "-prod")])).unwrap_err();
        assert!(e.message.starts_with(r#"label "env": label value "-prod""#), "{e}");
        assert!(validate_labels(&labels(&[("-env", "prod")])).is_err());
        let mut many: Labels = (0..64).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(validate_labels(&many), Ok(()));
        many.insert("one-more".into(), String::new());
        let e = validate_labels(&many).unwrap_err();
        assert!(e.message.contains("too many labels: 65"), "{e}");
    }

    #[test]
    fn dns1123_labels() {
        for ok in ["a", "my-cluster", "0abc", "a1-b2", &"a".repeat(63)] {
            assert_eq!(validate_dns1123_label(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "My", "a_b", "a.b", "-a", "a-", "é", &"a".repeat(64)] {
            assert!(validate_dns1123_label(bad).is_err(), "{bad:?}");
        }
        let e = validate_dns1123_label("Prod").unwrap_err().message;
        assert_eq!(e, r#"name "Prod" contains invalid character 'P' (allowed: a-z, 0-9, '-')"#);
    }

    #[test]
    fn parses_every_operator() {
        let v = |xs: &str| xs.split(' ').map(String::from).collect::<Vec<_>>();
        let parsed = sel(" a=1, b == 2,c!=3 , d in (x, y),e notin(z),f, !g, h=,a.io/i in (j) ");
        let ops: Vec<_> = parsed.requirements.iter().map(|r| (r.key.as_str(), &r.op)).collect();
        let expected = [
            ("a", &Op::Equals("1".into())),
            ("b", &Op::Equals("2".into())),
            ("c", &Op::NotEquals("3".into())),
            ("d", &Op::In(v("x y"))),
            ("e", &Op::NotIn(v("z"))),
            ("f", &Op::Exists),
            ("g", &Op::DoesNotExist),
            ("h", &Op::Equals(String::new())),
            ("a.io/i", &Op::In(v("j"))),
        ];
        assert_eq!(ops, expected);
        assert!(sel("").is_empty() && sel(" \t\n").is_empty() && !sel("a").is_empty());
        assert_eq!(sel("! g"), sel("!g"));
        let twenty: Vec<_> = (0..20).map(|i| format!("k{i}")).collect();
        assert_eq!(sel(&twenty.join(",")).requirements.len(), 20);
        let e = parse_err(&format!("{},k20", twenty.join(",")));
        assert_eq!(e, "selector has too many requirements (at most 20 allowed)");
    }

    #[test]
    fn parse_errors_are_clear() {
        let table = r#"
            env in (        => unexpected end of selector after "env in (", expected a value
            env in ()       => unexpected ")" after "env in (", expected a value
            env in (a,)     => unexpected ")" after "env in (a,", expected a value
            env in (a b)    => unexpected "b" after "env in (a", expected ',' or ')'
            env in a        => unexpected "a" after "env in", expected '(' starting a value list
            env notin       => unexpected end of selector after "env notin", expected '('
            =v              => unexpected "=" at start of selector, expected a label key
            a=b,            => unexpected end of selector after "a=b,", expected a label key
            ,               => unexpected "," at start of selector, expected a label key
            !               => unexpected end of selector after "!", expected a label key after '!'
            !a=b            => unexpected "=" after "!a", expected ',' or end of selector
            a b             => unexpected "b" after "a", expected an operator
            a=(b)           => unexpected "(" after "a=", expected a value
            a=b=c           => unexpected "=" after "a=b", expected ',' or end of selector
            a in (ok, bad!) => unexpected "!" after "a in (ok, bad", expected ',' or ')'
            -bad=x          => label key "-bad" must start and end with an alphanumeric character
            a>1             => label key "a>1" contains invalid character '>'
            a=-x            => label value "-x" must start and end with an alphanumeric
            a in (x, é)     => label value "é" contains invalid character 'é'"#;
        for line in table.lines().skip(1) {
            let (input, message) = line.split_once(" => ").unwrap();
            let e = parse_err(input.trim());
            assert!(e.starts_with(message), "{input:?}: {e}");
        }
        let e = parse_err("a\u{3000}=b"); // only ASCII whitespace separates tokens
        assert!(e.contains(r"invalid character '\u{3000}'"), "{e}");
        let e = parse_err(&format!("{}=v,", "k".repeat(5000)));
        assert!(e.len() < 200 && e.contains('…'), "{e}");
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let prod = labels(&[("env", "prod"), ("tier", "web"), ("gpu", "")]);
        let dev = labels(&[("env", "dev")]);
        let none = Labels::new();
        for (selector, expected) in [
            ("", [true, true, true]),
            ("env=prod", [true, false, false]),
            ("env!=prod", [false, true, true]),
            ("env in (prod, staging)", [true, false, false]),
            ("env notin (prod)", [false, true, true]),
            ("tier", [true, false, false]),
            ("!tier", [false, true, true]),
            ("gpu=", [true, false, false]),
            ("env=prod,tier=web", [true, false, false]),
            ("env,!tier", [false, true, false]),
            ("env=prod,env=dev", [false, false, false]),
        ] {
            let s = sel(selector);
            let got = [&prod, &dev, &none].map(|l| s.matches(l));
            assert_eq!(got, expected, "{selector:?}");
        }
    }

    #[test]
    fn parsing_never_panics() {
        let odd = "(|)|()|!!|!=|==|===|!!a|a!|a!!=b|in|in (a)|notin|a in|a in ((b))|a in (b|\
                   a in (b,,c)|,,|a,,b| , |\0|a=\0|ключ=значение|🦀|a=🦀|a in (🦀)|é!=é|\u{200b}|\
                   a\u{3000}=b|a/b/c=d|a in (b) c|a=b c|\u{feff}a=b|a=\u{301}";
        let mut inputs: Vec<String> = odd.split('|').map(String::from).collect();
        for s in ["env in (prod, staging),!legacy,tier!=db", "a.io/b notin (x),c==d,e"] {
            for (i, c) in s.char_indices() {
                let rest = &s[i + c.len_utf8()..];
                inputs.push(s[..i].to_string()); // every prefix
                inputs.push(format!("{}{rest}", &s[..i])); // every one-character deletion
                inputs.push(format!("{}é{}", &s[..i], &s[i..])); // a multi-byte insertion
            }
        }
        for s in ["a", "(", ",", "!", "=", "é", "a,", "a in (b,", "!a,"] {
            inputs.push(s.repeat(50_000));
        }
        inputs.push(format!("k in ({})", "v,".repeat(50_000)));
        for input in &inputs {
            if let Err(e) = input.parse::<Selector>() {
                let len = e.message.len();
                assert!(len > 0 && len < 400, "{input:?}: {e}");
            }
        }
    }
}
