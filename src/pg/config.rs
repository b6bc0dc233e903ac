//! The connection string, read into tokio-postgres's `Config`: its TLS settings taken out (see
//! [`TlsSettings`]) and its password given to the [`Redactor`], both from one reading of the string
//! ([`ConnInfo`]).

use std::time::Duration;

use super::conninfo::ConnInfo;
use super::redact::Redactor;
use super::tls::TlsSettings;

/// A parsed connection string, and the means to keep its password out of messages.
pub struct ConnectionConfig {
    pub pg: tokio_postgres::Config,
    pub redactor: Redactor,
    /// `sslmode` and `sslrootcert`, which `pg` does not hold (its ssl mode follows them).
    pub tls: TlsSettings,
}

impl ConnectionConfig {
    /// Parses a `postgres://` URL or a `key=value` string. The error never quotes the password.
    pub fn parse(conn: &str, connect_timeout: Duration) -> Result<ConnectionConfig, String> {
        let info = ConnInfo::parse(conn);
        let mut redactor = Redactor::for_conn(&info);
        let (rest, tls) = TlsSettings::take_from(&info).map_err(|e| redactor.redact(&e))?;
        let mut pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
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
        pg.ssl_mode(tls.mode().ssl_mode());
        if pg.get_application_name().is_none() {
            pg.application_name("audit-batcher");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(connect_timeout);
        }
        Ok(ConnectionConfig { pg, redactor, tls })
    }

    /// Applies the `sslRootCert` option (a PEM file's path, or `system`). The error, about that option,
    /// says why it cannot be used; it never quotes the password.
    pub fn with_ssl_root_cert(mut self, path: &str) -> Result<ConnectionConfig, String> {
        self.tls = std::mem::take(&mut self.tls)
            .with_root_cert_option(path)
            .map_err(|e| self.redactor.redact(&e))?;
        self.pg.ssl_mode(self.tls.mode().ssl_mode());
        Ok(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

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
    fn defaults_are_filled_in() {
        let c = ConnectionConfig::parse("postgres://u@127.0.0.1/d", T).unwrap();
        assert_eq!(c.pg.get_application_name(), Some("audit-batcher"));
        assert_eq!(c.pg.get_connect_timeout(), Some(&T));
    }

    /// How a test writes a password into a connection string.
    #[derive(Clone, Copy, Debug)]
    enum Written {
        /// `postgres://bob:<password>@...`
        UrlUserInfo,
        /// `postgres://bob@...?password=<password>`
        UrlQuery,
        /// `password=<password>`, escaped.
        Pair,
        /// `password='<password>'`
        QuotedPair,
    }

    /// `value` %-encoded where a URL part needs it: `%`, the `end` characters, and, when `all`, every
    /// character but ASCII letters and digits.
    pub(crate) fn percent_encode(value: &str, end: &[char], all: bool) -> String {
        let mut out = String::new();
        for c in value.chars() {
            if c == '%' || end.contains(&c) || (all && !c.is_ascii_alphanumeric()) {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `value` as written in a pair, without quotes: backslash before the characters that need one.
    fn escape(value: &str, quoted: bool) -> String {
        let mut out = String::new();
        for c in value.chars() {
            if c == '\\' || c == '\'' || (!quoted && c.is_whitespace()) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    /// A connection string holding `password` as `written` (the password as it appears in the string is
    /// returned too), with one of a few faults: `fault` 0 is none; 1 a bad port, 2 an unknown sslmode, 3
    /// sslmode=allow, 4 an unknown option, 5 sslrootcert=system with sslmode=require, 6 an unterminated
    /// parameter or quote.
    fn conn_string(
        password: &str,
        written: Written,
        encode_all: bool,
        fault: u8,
    ) -> (String, String) {
        let url = matches!(written, Written::UrlUserInfo | Written::UrlQuery);
        let extra = match (fault, url) {
            (2, _) => "sslmode=verify_full",
            (3, _) => "sslmode=allow",
            (4, _) => "bogus_option=1",
            (5, _) => "sslrootcert=system&sslmode=require",
            _ => "",
        };
        let port = if fault == 1 { "notaport" } else { "5432" };
        match written {
            Written::UrlUserInfo | Written::UrlQuery => {
                let (user_info, query, as_written) = if let Written::UrlUserInfo = written {
                    let pw = percent_encode(password, &['@'], encode_all);
                    (format!("bob:{pw}@"), String::new(), pw)
                } else {
                    let pw = percent_encode(password, &['&'], encode_all);
                    ("bob@".to_owned(), format!("password={pw}"), pw)
                };
                let mut params: Vec<&str> = [query.as_str(), extra]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect();
                if fault == 6 {
                    params.push("unterminated");
                }
                let query = if params.is_empty() {
                    String::new()
                } else {
                    format!("?{}", params.join("&"))
                };
                (
                    format!("postgres://{user_info}db.example:{port}/app{query}"),
                    as_written,
                )
            }
            Written::Pair | Written::QuotedPair => {
                let quoted = matches!(written, Written::QuotedPair);
                let pw = escape(password, quoted);
                let mut conn = format!("host=db.example port={port} user=bob password=");
                match (quoted, fault) {
                    // The quote left open.
                    (true, 6) => conn.push_str(&format!("'{pw}")),
                    (true, _) => conn.push_str(&format!("'{pw}'")),
                    // A key without a value after it.
                    (false, 6) => conn.push_str(&format!("{pw} dbname")),
                    (false, _) => conn.push_str(&pw),
                }
                if !extra.is_empty() {
                    conn.push(' ');
                    conn.push_str(&extra.replace('&', " "));
                }
                (conn, pw)
            }
        }
    }

    fn written() -> impl Strategy<Value = Written> {
        prop_oneof![
            Just(Written::UrlUserInfo),
            Just(Written::UrlQuery),
            Just(Written::Pair),
            Just(Written::QuotedPair),
        ]
    }

    proptest! {
        /// No password, in either form, however written, appears in an error or in redacted text, as
        /// given or as written in the string. (Passwords here have no `*`: the mask is made of them.)
        #[test]
        fn passwords_never_reach_a_message(
            password in "[^*\\x00]{6,20}",
            written in written(),
            encode_all in any::<bool>(),
            fault in 0u8..7,
            ssl_root_cert in any::<bool>(),
        ) {
            let (conn, as_written) = conn_string(&password, written, encode_all, fault);
            let leaks = |text: &str| text.contains(&password) || text.contains(&as_written);
            let parsed = ConnectionConfig::parse(&conn, T).and_then(|c| {
                if ssl_root_cert {
                    // Another file than the connection string's, or a weaker mode than 'system' asks.
                    c.with_ssl_root_cert(if fault == 5 { "/other.pem" } else { "system" })
                } else {
                    Ok(c)
                }
            });
            match parsed {
                Err(e) => {
                    prop_assert!(fault != 0, "{conn}: {e}");
                    prop_assert!(!leaks(&e), "{conn}: {e}");
                }
                Ok(c) => {
                    prop_assert!(fault == 0, "{conn}");
                    prop_assert_eq!(c.pg.get_password(), Some(password.as_bytes()));
                    let text = format!("connecting with {conn} failed: password {password}");
                    let redacted = c.redactor.redact(&text);
                    prop_assert!(!leaks(&redacted), "{redacted}");
                }
            }
        }
    }
}
