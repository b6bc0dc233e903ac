//! The one tokeniser of connection strings, in both forms tokio-postgres reads: a URL
//! (`postgres://user:password@host/db?key=value&...`) and libpq's keyword/value form
//! (`host=h password='quoted value'`). It yields each setting as written, with where it lies in the
//! string; the password redactor ([`super::redact`]) and the TLS settings ([`super::tls::TlsSettings`])
//! both read it.
//!
//! It follows tokio-postgres 0.7's grammar rather than libpq's where the two differ: a URL's user-info
//! runs to the first `@` anywhere in the string, and a query parameter's key to the next `=`, its value to
//! the next `&`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Where an [`Item`] was written, which says how its text is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A URL's user-info (`user:password@`), as the keys `user` and `password`; percent-encoded.
    UserInfo,
    /// A URL's query parameter (`?key=value&...`); key and value percent-encoded.
    Query,
    /// A `key = value` pair of the keyword/value form; the value maybe single-quoted, with backslash
    /// escapes.
    Pair,
}

/// One setting of a connection string, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item<'a> {
    pub place: Place,
    /// The key as written (for [`Place::UserInfo`], `user` or `password`).
    pub raw_key: &'a str,
    /// The value as written, without its quotes: escapes and percent-encoding left in.
    pub raw_value: &'a str,
    /// The bytes of the string the setting takes: `key=value` (quotes included, separators and the
    /// whitespace around them not) for a query parameter or a pair; the value alone for user-info.
    pub span: Range<usize>,
}

/// A URL part that is not UTF-8 once its `%XX` escapes are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotUtf8;

impl fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("is not UTF-8 once its %XX escapes are decoded")
    }
}

impl<'a> Item<'a> {
    /// The key as tokio-postgres reads it: percent-decoded in a URL.
    pub fn key(&self) -> Result<Cow<'a, str>, NotUtf8> {
        match self.place {
            Place::Query => percent_decode(self.raw_key),
            Place::UserInfo | Place::Pair => Ok(Cow::Borrowed(self.raw_key)),
        }
    }

    /// The value as tokio-postgres reads it: percent-decoded in a URL, unescaped in a pair.
    pub fn value(&self) -> Result<Cow<'a, str>, NotUtf8> {
        match self.place {
            Place::UserInfo | Place::Query => percent_decode(self.raw_value),
            Place::Pair => Ok(unescape(self.raw_value)),
        }
    }

    /// Whether the key is `key` (a key that is not UTF-8 once decoded is no ASCII key).
    pub fn is(&self, key: &str) -> bool {
        self.key().is_ok_and(|k| k == key)
    }
}

/// Which of the two forms a string is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `postgres://` or `postgresql://`; `query` is where the `?` that starts the query is, if any.
    Url { query: Option<usize> },
    /// `key=value` pairs.
    KeyValue,
}

/// A connection string cut into its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo<'a> {
    text: &'a str,
    pub form: Form,
    /// The settings, in the order written.
    pub items: Vec<Item<'a>>,
    /// Whether the whole string follows the grammar. When it does not, `items` holds the settings read
    /// before the fault, and a quoted value left open runs to the end of the string (so that a password
    /// in it is still known).
    pub complete: bool,
}

impl<'a> ConnInfo<'a> {
    /// Cuts `text` into its settings. Never fails: see [`ConnInfo::complete`].
    pub fn parse(text: &'a str) -> ConnInfo<'a> {
        let url_start = ["postgres://", "postgresql://"]
            .iter()
            .find(|prefix| text.starts_with(*prefix))
            .map(|prefix| prefix.len());
        match url_start {
            Some(start) => parse_url(text, start),
            None => parse_key_value(text),
        }
    }

    /// The string, as given.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The string without the items `drop` picks, the rest as written. In a URL the query is rebuilt from
    /// the parameters kept (none: no `?`); in the keyword/value form each item dropped leaves one space.
    /// A string that does not follow the grammar is returned whole.
    pub fn without(&self, drop: impl Fn(&Item) -> bool) -> String {
        if !self.complete || !self.items.iter().any(&drop) {
            return self.text.to_owned();
        }
        match self.form {
            Form::Url { query } => {
                // Only query parameters can be dropped; user-info lies before the query.
                let query = query.unwrap_or(self.text.len());
                let kept: Vec<&str> = self
                    .items
                    .iter()
                    .filter(|item| item.place == Place::Query && !drop(item))
                    .map(|item| &self.text[item.span.clone()])
                    .collect();
                let mut out = self.text[..query].to_owned();
                if !kept.is_empty() {
                    out.push('?');
                    out.push_str(&kept.join("&"));
                }
                out
            }
            Form::KeyValue => {
                let mut out = String::with_capacity(self.text.len());
                let mut from = 0;
                for item in self.items.iter().filter(|item| drop(item)) {
                    out.push_str(&self.text[from..item.span.start]);
                    out.push(' ');
                    from = item.span.end;
                }
                out.push_str(&self.text[from..]);
                out
            }
        }
    }
}

/// A URL, as tokio-postgres reads one: user-info up to the first `@`, host and path up to the next `?`,
/// then `key=value` parameters separated by `&`.
fn parse_url(text: &str, start: usize) -> ConnInfo<'_> {
    let mut items = Vec::new();
    let mut at = start;
    if let Some(end) = text[start..].find('@').map(|i| start + i) {
        let user_end = text[start..end].find(':').map_or(end, |i| start + i);
        items.push(Item {
            place: Place::UserInfo,
            raw_key: "user",
            raw_value: &text[start..user_end],
            span: start..user_end,
        });
        if user_end < end {
            items.push(Item {
                place: Place::UserInfo,
                raw_key: "password",
                raw_value: &text[user_end + 1..end],
                span: user_end + 1..end,
            });
        }
        at = end + 1;
    }
    let query = text[at..].find('?').map(|i| at + i);
    let mut complete = true;
    if let Some(query) = query {
        let mut from = query + 1;
        while from < text.len() {
            let Some(eq) = text[from..].find('=').map(|i| from + i) else {
                complete = false; // "unterminated parameter"
                break;
            };
            let end = text[eq + 1..].find('&').map_or(text.len(), |i| eq + 1 + i);
            items.push(Item {
                place: Place::Query,
                raw_key: &text[from..eq],
                raw_value: &text[eq + 1..end],
                span: from..end,
            });
            from = end + 1;
        }
    }
    ConnInfo {
        text,
        form: Form::Url { query },
        items,
        complete,
    }
}

/// The keyword/value form, as tokio-postgres reads it: `key = value` pairs separated by whitespace, a
/// value either single-quoted or running to the next whitespace, a backslash escaping the next character
/// in both.
fn parse_key_value(text: &str) -> ConnInfo<'_> {
    let mut items = Vec::new();
    let complete = read_pairs(text, &mut items);
    ConnInfo {
        text,
        form: Form::KeyValue,
        items,
        complete,
    }
}

/// Reads the pairs of `text` into `items`; whether it reached the end of `text` by the grammar.
fn read_pairs<'a>(text: &'a str, items: &mut Vec<Item<'a>>) -> bool {
    let mut i = 0;
    loop {
        i = skip(text, i, char::is_whitespace);
        let key_start = i;
        i = skip(text, i, |c| !c.is_whitespace() && c != '=');
        if i == key_start {
            // The end, or a '=' with no key before it (where tokio-postgres stops reading).
            return i == text.len();
        }
        let raw_key = &text[key_start..i];
        i = skip(text, i, char::is_whitespace);
        if !text[i..].starts_with('=') {
            return false;
        }
        i = skip(text, i + 1, char::is_whitespace);
        if text[i..].starts_with('\'') {
            let value_end = escaped_until(text, i + 1, |c| c == '\'');
            let closed = value_end < text.len();
            let end = value_end + usize::from(closed);
            items.push(Item {
                place: Place::Pair,
                raw_key,
                raw_value: &text[i + 1..value_end],
                span: key_start..end,
            });
            if !closed {
                // "unterminated quoted connection parameter value"
                return false;
            }
            i = end;
        } else {
            let end = escaped_until(text, i, char::is_whitespace);
            if end == i {
                // An empty unquoted value: "unexpected EOF".
                return false;
            }
            items.push(Item {
                place: Place::Pair,
                raw_key,
                raw_value: &text[i..end],
                span: key_start..end,
            });
            i = end;
        }
    }
}

/// The first index from `from` on whose character `pred` does not take (the string's length if none).
fn skip(text: &str, from: usize, pred: impl Fn(char) -> bool) -> usize {
    text[from..]
        .find(|c: char| !pred(c))
        .map_or(text.len(), |n| from + n)
}

/// Where the first unescaped character that is `end` lies, from `from` on (the string's length if none):
/// a backslash takes the character after it, whatever it is.
fn escaped_until(text: &str, from: usize, end: impl Fn(char) -> bool) -> usize {
    let mut chars = text[from..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
        } else if end(c) {
            return from + i;
        }
    }
    text.len()
}

/// A pair's value with its backslash escapes resolved.
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `%XX` escapes decoded, as tokio-postgres decodes URL parts (a `%` not followed by two hex digits stays).
fn percent_decode(raw: &str) -> Result<Cow<'_, str>, NotUtf8> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| NotUtf8)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `(key, value)` of each item, decoded.
    fn settings(text: &str) -> Vec<(String, String)> {
        ConnInfo::parse(text)
            .items
            .iter()
            .map(|item| {
                (
                    item.key().unwrap().into_owned(),
                    item.value().unwrap().into_owned(),
                )
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_url_yields_its_user_info_and_query_parameters() {
        let text =
            "postgres://bob:s%40cr3t@db.example:5432/app?sslmode=require&application_name=a%20b";
        let info = ConnInfo::parse(text);
        assert!(info.complete);
        assert_eq!(
            info.form,
            Form::Url {
                query: text.find('?')
            }
        );
        assert_eq!(
            settings(text),
            pairs(&[
                ("user", "bob"),
                ("password", "s@cr3t"),
                ("sslmode", "require"),
                ("application_name", "a b"),
            ])
        );
        assert_eq!(info.items[1].raw_value, "s%40cr3t");
        assert_eq!(&text[info.items[1].span.clone()], "s%40cr3t");
        assert_eq!(&text[info.items[2].span.clone()], "sslmode=require");
        // User-info runs to the first '@', whatever comes before it; the query starts after it.
        assert_eq!(
            settings("postgresql://u:p?w/@x@h/d?a=1"),
            pairs(&[("user", "u"), ("password", "p?w/"), ("a", "1")])
        );
        assert_eq!(settings("postgres://h/d"), pairs(&[]));
        assert_eq!(
            settings("postgres://u:@h"),
            pairs(&[("user", "u"), ("password", "")])
        );
        // As tokio-postgres reads a query: key to the next '=', value to the next '&'.
        assert_eq!(
            settings("postgres://h?a=1=2&&b=3&"),
            pairs(&[("a", "1=2"), ("&b", "3")])
        );
        let open = ConnInfo::parse("postgres://u:pw@h?a=1&b");
        assert!(!open.complete);
        assert_eq!(open.items.len(), 3);
    }

    #[test]
    fn key_value_pairs_are_unquoted_and_unescaped() {
        let text =
            r"host=h  sslmode = verify-ca sslrootcert='/etc/my ca\'s.pem'user=bob password=a\ b\\c";
        let info = ConnInfo::parse(text);
        assert!(info.complete);
        assert_eq!(info.form, Form::KeyValue);
        assert_eq!(
            settings(text),
            pairs(&[
                ("host", "h"),
                ("sslmode", "verify-ca"),
                ("sslrootcert", "/etc/my ca's.pem"),
                ("user", "bob"),
                ("password", r"a b\c"),
            ])
        );
        assert_eq!(&text[info.items[1].span.clone()], "sslmode = verify-ca");
        assert_eq!(
            &text[info.items[2].span.clone()],
            r"sslrootcert='/etc/my ca\'s.pem'"
        );
        assert_eq!(info.items[2].raw_value, r"/etc/my ca\'s.pem");
        assert_eq!(info.items[4].raw_value, r"a\ b\\c");
        assert_eq!(settings("  "), pairs(&[]));
        assert_eq!(settings("a=''"), pairs(&[("a", "")]));
    }

    #[test]
    fn a_string_off_the_grammar_is_incomplete_with_what_came_before() {
        for (text, read) in [
            ("host=h password='open to the end", 2),
            ("host=h password", 1),
            ("host=h password hunter2", 1),
            ("host=h password=", 1),
            ("host=h =x", 1),
            ("not a connection string", 0),
        ] {
            let info = ConnInfo::parse(text);
            assert!(!info.complete, "{text}");
            assert_eq!(info.items.len(), read, "{text}");
        }
        let open = ConnInfo::parse("host=h password='open to the end");
        assert_eq!(open.items[1].raw_value, "open to the end");
    }

    #[test]
    fn without_keeps_the_rest_as_written() {
        let drop_tls = |item: &Item| item.is("sslmode") || item.is("sslrootcert");
        let cases = [
            ("postgres://u@h/d?sslmode=require", "postgres://u@h/d"),
            (
                "postgres://u@h/d?a=1&sslrootcert=x&b=2&sslmode=require",
                "postgres://u@h/d?a=1&b=2",
            ),
            ("postgres://u:p@h/d?a=1", "postgres://u:p@h/d?a=1"),
            (
                "postgres://u@h/d?ssl%6Dode=require&a=1",
                "postgres://u@h/d?a=1",
            ),
            (
                "host=h sslmode=require password='a b'",
                "host=h   password='a b'",
            ),
            ("sslmode=require", " "),
            ("host=h password='open", "host=h password='open"),
            (
                "postgres://u@h/d?sslmode=require&b",
                "postgres://u@h/d?sslmode=require&b",
            ),
        ];
        for (text, rest) in cases {
            assert_eq!(ConnInfo::parse(text).without(drop_tls), rest, "{text}");
        }
    }

    #[test]
    fn percent_decoding_is_tokio_postgres_s() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), Ok(Cow::Borrowed("a/b%zz%4")));
        assert_eq!(percent_decode("%C3%A9"), Ok(Cow::Borrowed("é")));
        assert_eq!(percent_decode("%ff"), Err(NotUtf8));
        let info = ConnInfo::parse("postgres://h?%ff=1");
        assert!(!info.items[0].is("sslmode"));
        assert_eq!(info.items[0].key(), Err(NotUtf8));
    }

    /// A value written so that tokio-postgres reads it back as `value`: quoted and escaped, or unquoted
    /// with every special character escaped.
    fn write_pair_value(value: &str, quoted: bool) -> String {
        let mut out = String::new();
        if quoted {
            out.push('\'');
        }
        for c in value.chars() {
            if c == '\\' || c == '\'' || (!quoted && c.is_whitespace()) {
                out.push('\\');
            }
            out.push(c);
        }
        if quoted {
            out.push('\'');
        }
        out
    }

    proptest! {
        /// Whatever the values, the tokeniser reads what tokio-postgres reads.
        #[test]
        fn values_read_as_tokio_postgres_reads_them(
            user in "[^\\x00]{1,12}",
            app in "[^\\x00]{1,12}",
            dbname in "[^\\x00]{1,12}",
            quoted in any::<[bool; 3]>(),
            spaces in "[ \t]{0,2}",
        ) {
            let text = format!(
                "host=h user{spaces}={spaces}{} application_name={} dbname{spaces}={}",
                write_pair_value(&user, quoted[0]),
                write_pair_value(&app, quoted[1]),
                write_pair_value(&dbname, quoted[2]),
            );
            let config: tokio_postgres::Config = text.parse().unwrap();
            let info = ConnInfo::parse(&text);
            prop_assert!(info.complete);
            let read = settings(&text);
            prop_assert_eq!(&read[1], &("user".to_owned(), config.get_user().unwrap().to_owned()));
            prop_assert_eq!(&read[2], &("application_name".to_owned(), config.get_application_name().unwrap().to_owned()));
            prop_assert_eq!(&read[3], &("dbname".to_owned(), config.get_dbname().unwrap().to_owned()));
            let rest = info.without(|item| item.is("application_name"));
            let config: tokio_postgres::Config = rest.parse().unwrap();
            prop_assert_eq!(config.get_application_name(), None);
            prop_assert_eq!(config.get_dbname(), Some(dbname.as_str()));
        }

        /// The same in a URL, its parts %-encoded where they must be (or everywhere).
        #[test]
        fn url_parts_read_as_tokio_postgres_reads_them(
            user in "[^\\x00]{1,12}",
            password in "[^\\x00]{0,12}",
            app in "[^\\x00]{1,12}",
            encode_all in any::<bool>(),
        ) {
            let encode = |value: &str, end: &[char]| {
                crate::pg::config::tests::percent_encode(value, end, encode_all)
            };
            let text = format!(
                "postgres://{}:{}@h/d?application_name={}&connect_timeout=3",
                encode(&user, &['@', ':']),
                encode(&password, &['@']),
                encode(&app, &['&']),
            );
            let config: tokio_postgres::Config = text.parse().unwrap();
            let info = ConnInfo::parse(&text);
            prop_assert!(info.complete);
            prop_assert_eq!(
                settings(&text),
                pairs(&[
                    ("user", config.get_user().unwrap()),
                    ("password", std::str::from_utf8(config.get_password().unwrap()).unwrap()),
                    ("application_name", config.get_application_name().unwrap()),
                    ("connect_timeout", "3"),
                ])
            );
            let rest = info.without(|item| item.is("application_name"));
            // The query starts at the first '?' after the user-info.
            let query = text.find("@h/d?").unwrap() + 4;
            prop_assert_eq!(info.form, Form::Url { query: Some(query) });
            prop_assert_eq!(rest, format!("{}?connect_timeout=3", &text[..query]));
        }
    }
}
