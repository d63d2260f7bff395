//! The rules of this module's parsers written as JSON Schema, for the OpenAPI document, so a
//! client or validator refuses what the server would refuse and nothing else. The tests hold
//! each pattern to its parser; change them together.

use utoipa::openapi::schema::{AdditionalProperties, KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;

/// A DNS-1123 label (`validate_dns1123_label`): a cluster's name.
pub const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// At most 253 characters before a label key's `/`. A lookahead over key characters only, so
/// the key's pattern also works inside the selector's, where more text follows the key.
macro_rules! prefix_limit {
    () => {
        "(?![-_.A-Za-z0-9]{254})"
    };
}

/// A label key (`validate_key`): an optional DNS-subdomain prefix of at most 253 characters
/// and `/`, then a name of 1 to 63 characters.
pub const LABEL_KEY: &str =
    concat!("^", prefix_limit!(), "([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?$");
const LABEL_KEY_MAX: usize = 253 + 1 + 63;

/// A label value (`validate_value`): empty, or a name of 1 to 63 characters.
pub const LABEL_VALUE: &str = "^([A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?)?$";

/// A display name (`parse_display_name`): 1 to 100 characters once trimmed of Unicode white
/// space, no control characters inside. Written with explicit classes because ECMA-262's `\s`
/// is not Rust's `char::is_whitespace`.
pub const DISPLAY_NAME: &str = concat!(
    "^[\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*",
    "[^\\u0000-\\u001f\\u007f-\\u009f \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]",
    "([^\\u0000-\\u001f\\u007f-\\u009f]{0,98}",
    "[^\\u0000-\\u001f\\u007f-\\u009f \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?",
    "[\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*$",
);

fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern))
}

/// Schema of a cluster name.
pub fn cluster_name() -> Object {
    string(DNS1123_LABEL).min_length(Some(1)).max_length(Some(63)).description(Some("A DNS-1123 label, unique within the organization")).build()
}

/// Schema of an organization's or an API token's name.
pub fn display_name() -> Object {
    string(DISPLAY_NAME).description(Some("1 to 100 characters once trimmed, no control characters")).build()
}

/// Schema of an e-mail address as `Email` accepts it.
pub fn email() -> Object {
    ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Email))).max_length(Some(254)).build()
}

/// Schema of a password as `Password` accepts it.
pub fn password() -> Object {
    let (min, max) = (super::Password::MIN_CHARS, super::Password::MAX_CHARS);
    ObjectBuilder::new().schema_type(Type::String).min_length(Some(min)).max_length(Some(max)).description(Some(format!("{min} to {max} characters"))).build()
}

/// The pattern of a label selector (`Selector::from_str`): up to 20 comma-separated
/// requirements `key`, `!key`, `key=value` (`==`, `!=`), `key in (v1,v2)`, `key notin (...)`,
/// with ASCII white space between tokens.
pub fn selector_pattern() -> String {
    let ws = "[\\t\\n\\u000c\\r ]";
    let key = &LABEL_KEY[1..LABEL_KEY.len() - 1];
    let value = &LABEL_VALUE[1..LABEL_VALUE.len() - 1];
    let word = &value[1..value.len() - 2];
    let list = format!("\\({ws}*{word}({ws}*,{ws}*{word})*{ws}*\\)");
    let requirement = format!("(!{ws}*{key}|{key}({ws}*(==|!=|=){ws}*{value}|{ws}+(in|notin){ws}*{list})?)");
    let more = super::labels::MAX_REQUIREMENTS - 1;
    format!("^{ws}*({requirement}({ws}*,{ws}*{requirement}){{0,{more}}})?{ws}*$")
}

/// Schema of a label selector.
pub fn selector() -> Object {
    string(&selector_pattern()).description(Some("Kubernetes label selector, e.g. `env=prod,tier in (web,api),!legacy`")).build()
}

/// The pattern of a list of namespaces (`parse_namespace_list`).
pub fn namespace_list_pattern() -> String {
    let label = &DNS1123_LABEL[1..DNS1123_LABEL.len() - 1];
    let more = super::labels::MAX_NAMESPACE_LIST - 1;
    format!("^({label})?(,({label})?){{0,{more}}}$")
}

/// Schema of a list of namespaces.
pub fn namespace_list() -> Object {
    string(&namespace_list_pattern()).description(Some("Comma-separated namespace names (DNS-1123 labels), at most 100")).build()
}

/// Schema of a set of labels as `validate_labels` accepts it.
pub fn labels() -> Object {
    let key = string(LABEL_KEY).min_length(Some(1)).max_length(Some(LABEL_KEY_MAX)).build();
    let value = string(LABEL_VALUE).max_length(Some(63)).build();
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(key))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(value)))))
        .max_properties(Some(super::labels::MAX_LABELS))
        .description(Some("Kubernetes-style labels: keys `[prefix/]name`, values of at most 63 characters"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::labels::{parse_namespace_list, validate_dns1123_label, validate_key, validate_value, Selector};
    use crate::domain::{parse_display_name, Email};

    fn agree(pattern: &str, samples: &[&str], parser: impl Fn(&str) -> bool) {
        // The regex crate has no lookahead: take it out and check what it says by hand.
        let limited = pattern.contains(prefix_limit!());
        let re = regex::RegexBuilder::new(&pattern.replace(prefix_limit!(), "")).size_limit(1 << 28).build().unwrap();
        for s in samples {
            let prefix_ok = !limited || s.chars().take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).count() < 254;
            assert_eq!(re.is_match(s) && prefix_ok, parser(s), "pattern and parser disagree on {s:?}");
        }
    }

    const WORDS: &[&str] = &[
        "",
        "a",
        "A",
        "0",
        "-",
        "a-",
        "-a",
        "a-b",
        "a_b",
        "a.b",
        "A.b_c-9",
        "my-cluster",
        "Prod",
        "é",
        "a b",
        "a/b",
        "a/b/c",
        "/a",
        "a/",
        "example.com/app",
        "app.kubernetes.io/name",
        "x-1/y",
        "Example.com/a",
        "a..b/c",
        "-a.com/c",
        "a_b.com/c",
        "example.com/.x",
        "a.b.c/D_e",
        "a\u{0}",
        "k\n",
    ];

    #[test]
    fn label_patterns_agree_with_the_parsers() {
        let long = [
            "a".repeat(63),
            "a".repeat(64),
            format!("n/{}", "b".repeat(64)),
            format!("{}/n", "a".repeat(253)),
            format!("{}/n", "a".repeat(254)),
            format!("{}.b/n", "a".repeat(260)),
        ];
        let samples: Vec<&str> = WORDS.iter().copied().chain(long.iter().map(String::as_str)).collect();
        agree(DNS1123_LABEL, &samples, |s| validate_dns1123_label(s).is_ok());
        agree(LABEL_KEY, &samples, |s| validate_key(s).is_ok());
        agree(LABEL_VALUE, &samples, |s| validate_value(s).is_ok());
    }

    #[test]
    fn selector_pattern_agrees_with_the_parser() {
        let (twenty, twenty_one) = (["a"; 20].join(","), ["a"; 21].join(","));
        let long_prefix = format!("{}/n=v", "a".repeat(254));
        let samples = [
            "",
            "  ",
            "env",
            "!env",
            "! env",
            "env=prod",
            "env==prod",
            "env!=prod",
            "env = prod",
            "env=",
            "env=,a",
            "env in (a,b)",
            "env in(a)",
            "env notin ( a , b )",
            "env in ()",
            "env in (a,)",
            "env in",
            "envin (a)",
            "env in (a)b",
            "a,b",
            "a,",
            ",a",
            "a b",
            "a!b",
            "!a=b",
            "a===b",
            "a=b(",
            "example.com/app=x",
            "in in (in)",
            "a\u{b}=b",
            "a\t,\tb",
            "A=b-",
            "a=b=c",
            "a in (b) , !c, d!=e",
            &twenty,
            &twenty_one,
            "é=1",
            "(a)",
            "a=(b)",
            &long_prefix,
        ];
        agree(&selector_pattern(), &samples, |s| s.parse::<Selector>().is_ok());
    }

    #[test]
    fn namespace_list_pattern_agrees_with_the_parser() {
        let (hundred, hundred_one) = (["shop"; 100].join(","), ["shop"; 101].join(","));
        let samples = [
            "",
            "shop",
            "shop,payments",
            ",shop,,",
            "shop, payments",
            " shop",
            "Shop",
            "-shop",
            "a".repeat(63).leak(),
            "a".repeat(64).leak(),
            "a/b",
            &hundred,
            &hundred_one,
        ];
        agree(&namespace_list_pattern(), &samples, |s| parse_namespace_list(s).is_ok());
    }

    #[test]
    fn display_name_pattern_agrees_with_the_parser() {
        let long = ["x".repeat(100), "x".repeat(101), format!("  {}  ", "x".repeat(100)), format!("\u{3000}{}", "y".repeat(99))];
        let samples: Vec<&str> = [
            "",
            " ",
            "Acme",
            " Acme ",
            "\tAcme\n",
            "Ac me",
            "Ac\nme",
            "Ac\u{7f}me",
            "\u{85}Acme",
            "Ac\u{85}me",
            "\u{a0}",
            "\u{a0}A\u{2003}",
            "日本",
            "\u{feff}",
            "a\u{200b}b",
            "Acme\u{2028}",
        ]
        .into_iter()
        .chain(long.iter().map(String::as_str))
        .collect();
        agree(DISPLAY_NAME, &samples, |s| parse_display_name(s).is_ok());
    }

    #[test]
    fn email_max_length_is_the_parsers() {
        let at_most = |n: usize| format!("{}@example.com", "a".repeat(n - "@example.com".len()));
        assert!(at_most(254).parse::<Email>().is_ok());
        assert!(at_most(255).parse::<Email>().is_err());
    }
}
