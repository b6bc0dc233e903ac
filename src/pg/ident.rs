//! SQL identifiers: which table and column names are accepted, and how they are quoted.

use std::fmt;

/// The longest identifier PostgreSQL keeps without truncating it (`NAMEDATALEN - 1`).
const MAX_IDENT_BYTES: usize = 63;

/// A table or column name: an ASCII letter or underscore, then letters, digits, `_` or `$`, at most 63
/// bytes. It is always written quoted, so it names exactly the object spelled, case included
/// (`createdAt` is the column `"createdAt"`, as Prisma makes it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Checks `s`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Ident, String> {
        let mut chars = s.chars();
        let valid_start = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if s.is_empty() {
            Err("must not be empty".into())
        } else if s.len() > MAX_IDENT_BYTES {
            Err(format!("{s:?} is longer than {MAX_IDENT_BYTES} bytes"))
        } else if !valid_start || !valid_rest {
            Err(format!(
                "{s:?} is not a plain SQL identifier (a letter or _, then letters, digits, _ or $)"
            ))
        } else {
            Ok(Ident(s.to_owned()))
        }
    }

    /// A name written into this crate's source, known to be valid.
    pub(crate) fn known_valid(s: &'static str) -> Ident {
        debug_assert!(Ident::parse(s).is_ok(), "{s}");
        Ident(s.to_owned())
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    /// The quoted form, ready for SQL text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // parse() admits no double quote, so there is nothing to escape.
        write!(f, "\"{}\"", self.0)
    }
}

/// A table name, optionally qualified by its schema (`audit_log`, `audit.events`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<Ident>,
    pub name: Ident,
}

impl TableName {
    /// Parses `name` or `schema.name`.
    pub fn parse(s: &str) -> Result<TableName, String> {
        match s.split_once('.') {
            Some((schema, name)) => Ok(TableName {
                schema: Some(Ident::parse(schema).map_err(|e| format!("schema {e}"))?),
                name: Ident::parse(name)?,
            }),
            None => Ok(TableName {
                schema: None,
                name: Ident::parse(s)?,
            }),
        }
    }

    /// The name without quotes, as given (for messages and lock keys).
    pub fn plain(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.as_str(), self.name.as_str()),
            None => self.name.as_str().to_owned(),
        }
    }
}

impl fmt::Display for TableName {
    /// The quoted, qualified form, ready for SQL text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_accepted_and_quoted() {
        assert_eq!(
            Ident::parse("createdAt").unwrap().to_string(),
            "\"createdAt\""
        );
        assert_eq!(Ident::parse("_a$1").unwrap().to_string(), "\"_a$1\"");
        let t = TableName::parse("audit.events").unwrap();
        assert_eq!(t.to_string(), "\"audit\".\"events\"");
        assert_eq!(t.plain(), "audit.events");
    }

    #[test]
    fn anything_that_could_break_out_of_quotes_is_refused() {
        for bad in [
            "",
            "a\"b",
            "a;drop table x",
            "1abc",
            "a b",
            "a-b",
            "é",
            "a.b.c",
            ".a",
            "a.",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
