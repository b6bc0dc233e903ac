//! The connection string: parsing it, and keeping its password out of every message.

use std::time::Duration;

use tokio_postgres::config::SslMode;

/// Removes known secrets from text before it reaches a user: error messages, stats, logs.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Text shown in place of a secret.
    pub const MASK: &'static str = "********";

    fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_owned());
            // Longest first, so that a secret containing another is masked whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every known secret, and any `user:password@` part of a URL, masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), Self::MASK);
            }
        }
        mask_url_passwords(&out)
    }
}

/// Masks the password of every `scheme://user:password@` in `text`.
fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str(Redactor::MASK);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// The password as written in a URL's user-info or a `password=` pair, still percent-encoded or quoted.
fn raw_passwords(conn: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, tail)) = conn.split_once("://") {
        let authority = tail.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                found.push(pw.to_owned());
            }
        }
        if let Some((_, query)) = tail.split_once('?') {
            for pair in query.split('&') {
                if let Some(pw) = pair.strip_prefix("password=") {
                    found.push(pw.to_owned());
                }
            }
        }
    } else {
        let mut words = conn.split_whitespace();
        while let Some(word) = words.next() {
            if let Some(pw) = word.strip_prefix("password=") {
                found.push(pw.trim_matches('\'').to_owned());
            } else if word == "password" || word == "password=" {
                if let Some(next) = words.next() {
                    found.push(next.trim_start_matches('=').trim_matches('\'').to_owned());
                }
            }
        }
    }
    found
}

/// A parsed connection string, and the means to keep its password out of messages.
pub struct ConnectionConfig {
    pub pg: tokio_postgres::Config,
    pub redactor: Redactor,
}

impl ConnectionConfig {
    /// Parses a `postgres://` URL or a `key=value` string. The error never quotes the password.
    pub fn parse(conn: &str, connect_timeout: Duration) -> Result<ConnectionConfig, String> {
        let mut redactor = Redactor::default();
        for pw in raw_passwords(conn) {
            redactor.add(&pw);
        }
        let mut pg: tokio_postgres::Config = conn.parse().map_err(|e: tokio_postgres::Error| {
            let mut why = e.to_string();
            if let Some(cause) = std::error::Error::source(&e) {
                why = format!("{why}: {cause}");
            }
            redactor.redact(&format!(
                "is not a valid PostgreSQL connection string ({why})"
            ))
        })?;
        if let Some(pw) = pg.get_password() {
            redactor.add(&String::from_utf8_lossy(pw));
        }
        if pg.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        if pg.get_ssl_mode() == SslMode::Require {
            return Err(
                "asks for sslmode=require, but this build connects without TLS; use sslmode=disable or prefer"
                    .into(),
            );
        }
        if pg.get_application_name().is_none() {
            pg.application_name("audit-batcher");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(connect_timeout);
        }
        Ok(ConnectionConfig { pg, redactor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn url_passwords_are_masked_even_when_percent_encoded() {
        let c = ConnectionConfig::parse("postgres://bob:s%40cr3t@db.example:5432/app", T).unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"s@cr3t"[..]));
        let msg = c
            .redactor
            .redact("failed for postgres://bob:s%40cr3t@db.example/app: s@cr3t");
        assert!(
            !msg.contains("s@cr3t") && !msg.contains("s%40cr3t"),
            "{msg}"
        );
        assert!(msg.contains("bob:"), "{msg}");
    }

    #[test]
    fn key_value_passwords_are_masked() {
        let c = ConnectionConfig::parse("host=localhost user=bob password=hunter22 dbname=x", T)
            .unwrap();
        assert_eq!(c.redactor.redact("bad hunter22"), "bad ********");
    }

    #[test]
    fn a_string_that_does_not_parse_is_refused_without_its_password() {
        let err = ConnectionConfig::parse("postgres://bob:hunter22@host:notaport/db", T)
            .err()
            .unwrap();
        assert!(!err.contains("hunter22"), "{err}");
        assert!(ConnectionConfig::parse("not a connection string", T).is_err());
    }

    #[test]
    fn urls_in_any_text_lose_their_password() {
        assert_eq!(
            mask_url_passwords("see postgresql://u:p@h:1/d and http://x/y"),
            "see postgresql://u:********@h:1/d and http://x/y"
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = ConnectionConfig::parse("postgres://u@127.0.0.1/d", T).unwrap();
        assert_eq!(c.pg.get_application_name(), Some("audit-batcher"));
        assert_eq!(c.pg.get_connect_timeout(), Some(&T));
    }
}
