//! The connection string: parsing it, its TLS settings, and keeping its password out of every message.

use std::ops::Range;
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

/// `sslmode`, with libpq's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plain otherwise (the default).
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// TLS, a trusted chain, and a certificate made out to the host connected to.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<TlsMode, String> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            "allow" => return Err(
                "asks for sslmode=allow, which is not supported; use disable, prefer or require"
                    .into(),
            ),
            other => {
                return Err(format!(
                    "has sslmode={other:?}; use disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    /// The name as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// How tokio-postgres negotiates: whether TLS is asked for, and whether it is a must.
    pub fn ssl_mode(self) -> SslMode {
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        }
    }
}

/// The CA certificates a server's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file of CA certificates; `option` names where its path was given (`connectionString`'s
    /// `sslrootcert` or the `sslRootCert` option).
    File { path: String, option: &'static str },
    /// Mozilla's root CAs (the `webpki-roots` crate): `sslrootcert=system`, or verify-ca/verify-full without
    /// a CA file.
    WellKnown,
}

/// What a connection checks of the server's certificate (when it uses TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the connection is encrypted, but the server is not authenticated.
    None,
    /// The certificate chains to one of these CAs.
    Chain(RootCerts),
    /// The certificate chains to one of these CAs and names the host connected to.
    ChainAndHost(RootCerts),
}

/// The TLS part of a connection string (`sslmode`, `sslrootcert`) and of the `sslRootCert` option.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode` as given; `None` when not given.
    requested: Option<TlsMode>,
    /// `sslrootcert` as given (a path, or `system`), and the option it came from.
    root_cert: Option<(String, &'static str)>,
}

impl TlsSettings {
    const SYSTEM: &'static str = "system";

    /// The sslmode in force: as given, else verify-full with `sslrootcert=system` (as libpq), else prefer.
    pub fn mode(&self) -> TlsMode {
        match (self.requested, &self.root_cert) {
            (Some(mode), _) => mode,
            (None, Some((root, _))) if root == Self::SYSTEM => TlsMode::VerifyFull,
            (None, _) => TlsMode::Prefer,
        }
    }

    /// The checks made on the server's certificate. With a CA file, prefer and require check the chain
    /// too (as libpq does when a root certificate is there); verify-* without one trust Mozilla's roots.
    pub fn verification(&self) -> Verification {
        let roots = self.root_cert.as_ref().map(|(root, option)| {
            if root == Self::SYSTEM {
                RootCerts::WellKnown
            } else {
                RootCerts::File {
                    path: root.clone(),
                    option,
                }
            }
        });
        match self.mode() {
            TlsMode::Disable => Verification::None,
            TlsMode::Prefer | TlsMode::Require => {
                roots.map_or(Verification::None, Verification::Chain)
            }
            TlsMode::VerifyCa => Verification::Chain(roots.unwrap_or(RootCerts::WellKnown)),
            TlsMode::VerifyFull => {
                Verification::ChainAndHost(roots.unwrap_or(RootCerts::WellKnown))
            }
        }
    }

    /// libpq's rule: the system's CAs vouch for any name, so they are only used with a host name check.
    fn check(&self) -> Result<(), String> {
        match &self.root_cert {
            Some((root, option)) if root == Self::SYSTEM && self.mode() != TlsMode::VerifyFull => {
                let given = match *option {
                    "sslRootCert" => "sslRootCert 'system'",
                    _ => "sslrootcert=system",
                };
                Err(format!(
                    "sslmode={} may not be used with {given}; use sslmode=verify-full",
                    self.mode().as_str()
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL query parameters or `key=value`
/// pairs; the last of each counts), leaving the rest as written: tokio-postgres knows neither
/// verify-ca/verify-full nor sslrootcert. A string these parsers cannot follow is returned as it is, for
/// tokio-postgres to refuse.
fn take_tls_params(conn: &str) -> Result<(String, TlsSettings), String> {
    let mut tls = TlsSettings::default();
    let mut apply = |key: &str, value: &str| -> Result<(), String> {
        match key {
            "sslmode" => tls.requested = Some(TlsMode::parse(value)?),
            _ if value.is_empty() => tls.root_cert = None,
            _ => tls.root_cert = Some((value.to_owned(), "connectionString")),
        }
        Ok(())
    };
    let is_tls_key = |key: &str| key == "sslmode" || key == "sslrootcert";
    let rest = if let Some(after_scheme) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| conn.strip_prefix(prefix))
    {
        // As tokio-postgres reads a URL: user-info up to the first '@', then the query from the next '?'.
        let skip = conn.len() - after_scheme.len() + after_scheme.find('@').map_or(0, |at| at + 1);
        let Some(q) = conn[skip..].find('?').map(|q| skip + q) else {
            return Ok((conn.to_owned(), tls));
        };
        let mut kept = Vec::new();
        for pair in conn[q + 1..].split('&') {
            match pair.split_once('=') {
                Some((key, value)) if is_tls_key(&percent_decode(key)?) => {
                    apply(&percent_decode(key)?, &percent_decode(value)?)?
                }
                _ => kept.push(pair),
            }
        }
        let mut rest = conn[..q].to_owned();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        rest
    } else {
        let Some(pairs) = key_value_pairs(conn) else {
            return Ok((conn.to_owned(), tls));
        };
        let mut rest = String::with_capacity(conn.len());
        let mut from = 0;
        for (key, value, span) in pairs {
            if is_tls_key(key) {
                apply(key, &value)?;
                rest.push_str(&conn[from..span.start]);
                rest.push(' ');
                from = span.end;
            }
        }
        rest.push_str(&conn[from..]);
        rest
    };
    tls.check()?;
    Ok((rest, tls))
}

/// `%XX` escapes decoded, as tokio-postgres decodes URL parts (a `%` not followed by two hex digits stays).
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| "has a URL parameter that is not UTF-8 once decoded".to_owned())
}

/// The `key = value` pairs of a libpq keyword/value string, each with its value unquoted and the byte
/// range it spans; `None` when the string does not follow the syntax (as tokio-postgres reads it).
fn key_value_pairs(conn: &str) -> Option<Vec<(&str, String, Range<usize>)>> {
    let mut pairs = Vec::new();
    let mut it = conn.char_indices().peekable();
    let end_of = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        it.peek().map_or(conn.len(), |&(i, _)| i)
    };
    loop {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let start = end_of(&mut it);
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key = &conn[start..end_of(&mut it)];
        if key.is_empty() {
            return (it.peek().is_none()).then_some(pairs);
        }
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        it.next_if(|&(_, c)| c == '=')?;
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match it.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(it.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        pairs.push((key, value, start..end_of(&mut it)));
    }
}

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
        let mut redactor = Redactor::default();
        for pw in raw_passwords(conn) {
            redactor.add(&pw);
        }
        let (conn, tls) = take_tls_params(conn)?;
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
    /// says why it cannot be used.
    pub fn with_ssl_root_cert(mut self, path: &str) -> Result<ConnectionConfig, String> {
        match &self.tls.root_cert {
            Some((given, _)) if given != path => {
                return Err(format!(
                    "is {path:?}, but the connection string's sslrootcert is {given:?}; give one of them"
                ))
            }
            _ if path.is_empty() => return Err("must not be empty".into()),
            _ => {}
        }
        self.tls.root_cert = Some((path.to_owned(), "sslRootCert"));
        self.tls.check()?;
        self.pg.ssl_mode(self.tls.mode().ssl_mode());
        Ok(self)
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

    fn tls(conn: &str) -> (ConnectionConfig, TlsMode, Verification) {
        let c = ConnectionConfig::parse(conn, T).unwrap();
        let (mode, verification) = (c.tls.mode(), c.tls.verification());
        assert_eq!(c.pg.get_ssl_mode(), mode.ssl_mode(), "{conn}");
        (c, mode, verification)
    }

    fn file(path: &str) -> RootCerts {
        RootCerts::File {
            path: path.into(),
            option: "connectionString",
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_a_url() {
        let (c, mode, verification) = tls(
            "postgres://bob:pw@db.example:6543/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fmy%20ca.pem&connect_timeout=3",
        );
        assert_eq!(mode, TlsMode::VerifyFull);
        assert_eq!(c.pg.get_ssl_mode(), SslMode::Require);
        assert_eq!(
            verification,
            Verification::ChainAndHost(file("/etc/my ca.pem"))
        );
        // The rest is read as before.
        assert_eq!(c.pg.get_application_name(), Some("x"));
        assert_eq!(c.pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.pg.get_dbname(), Some("app"));
        assert_eq!(c.pg.get_password(), Some(&b"pw"[..]));

        let (c, mode, _) = tls("postgresql://u@h/d?sslmode=verify-ca");
        assert_eq!(mode, TlsMode::VerifyCa);
        assert_eq!(c.pg.get_dbname(), Some("d"));
        // A '?' in an unencoded password is not the query (tokio-postgres reads up to the '@' first).
        let (c, mode, _) = tls("postgres://u:p?w@h/d?sslmode=require");
        assert_eq!(mode, TlsMode::Require);
        assert_eq!(c.pg.get_password(), Some(&b"p?w"[..]));
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_key_value_pairs() {
        let (c, mode, verification) = tls(
            r"host=localhost sslmode = verify-ca  sslrootcert='/etc/pki/my ca\'s.pem' dbname=app user=bob",
        );
        assert_eq!(mode, TlsMode::VerifyCa);
        assert_eq!(
            verification,
            Verification::Chain(file("/etc/pki/my ca's.pem"))
        );
        assert_eq!(c.pg.get_dbname(), Some("app"));
        assert_eq!(c.pg.get_user(), Some("bob"));
        let (_, _, verification) = tls(r"host=h sslrootcert=/a\ b.pem sslmode=verify-full");
        assert_eq!(verification, Verification::ChainAndHost(file("/a b.pem")));
        // The last one counts, as in libpq.
        let (_, mode, _) = tls("host=h sslmode=require dbname=x sslmode=disable");
        assert_eq!(mode, TlsMode::Disable);
    }

    #[test]
    fn each_sslmode_checks_what_libpq_checks() {
        let cases = [
            ("", TlsMode::Prefer, Verification::None),
            ("sslmode=disable", TlsMode::Disable, Verification::None),
            (
                "sslmode=disable sslrootcert=/ca",
                TlsMode::Disable,
                Verification::None,
            ),
            ("sslmode=prefer", TlsMode::Prefer, Verification::None),
            ("sslmode=require", TlsMode::Require, Verification::None),
            // A CA file makes prefer and require check the chain.
            (
                "sslrootcert=/ca",
                TlsMode::Prefer,
                Verification::Chain(file("/ca")),
            ),
            (
                "sslmode=require sslrootcert=/ca",
                TlsMode::Require,
                Verification::Chain(file("/ca")),
            ),
            (
                "sslmode=verify-ca",
                TlsMode::VerifyCa,
                Verification::Chain(RootCerts::WellKnown),
            ),
            (
                "sslmode=verify-ca sslrootcert=/ca",
                TlsMode::VerifyCa,
                Verification::Chain(file("/ca")),
            ),
            (
                "sslmode=verify-full",
                TlsMode::VerifyFull,
                Verification::ChainAndHost(RootCerts::WellKnown),
            ),
            // sslrootcert=system: the public CAs, and verify-full unless said otherwise.
            (
                "sslrootcert=system",
                TlsMode::VerifyFull,
                Verification::ChainAndHost(RootCerts::WellKnown),
            ),
            // An empty sslrootcert is none.
            (
                "sslmode=require sslrootcert=''",
                TlsMode::Require,
                Verification::None,
            ),
        ];
        for (params, mode, verification) in cases {
            let conn = format!("host=h {params}");
            let (_, got_mode, got) = tls(&conn);
            assert_eq!((got_mode, got), (mode, verification), "{conn}");
        }
    }

    #[test]
    fn unsupported_or_unknown_sslmodes_are_refused_clearly() {
        let err = |conn: &str| ConnectionConfig::parse(conn, T).err().unwrap();
        assert!(err("host=h sslmode=allow").contains("sslmode=allow, which is not supported"));
        let bogus = err("postgres://bob:hunter22@h/d?sslmode=verify_full");
        assert!(
            bogus.contains("sslmode=\"verify_full\"") && bogus.contains("verify-ca or verify-full"),
            "{bogus}"
        );
        assert!(!bogus.contains("hunter22"), "{bogus}");
        for weak in ["require", "verify-ca", "prefer"] {
            let e = err(&format!("host=h sslrootcert=system sslmode={weak}"));
            assert_eq!(
                e,
                format!("sslmode={weak} may not be used with sslrootcert=system; use sslmode=verify-full")
            );
        }
    }

    #[test]
    fn the_ssl_root_cert_option_joins_the_connection_string() {
        let with = |conn: &str, path: &str| {
            ConnectionConfig::parse(conn, T)
                .unwrap()
                .with_ssl_root_cert(path)
        };
        let c = with("postgres://u@h/d?sslmode=verify-full", "/ca.pem").unwrap();
        assert_eq!(
            c.tls.verification(),
            Verification::ChainAndHost(RootCerts::File {
                path: "/ca.pem".into(),
                option: "sslRootCert"
            })
        );
        let c = with("host=h", "system").unwrap();
        assert_eq!(c.tls.mode(), TlsMode::VerifyFull);
        assert_eq!(c.pg.get_ssl_mode(), SslMode::Require);
        // The same file twice is fine; two different ones are refused.
        with("host=h sslrootcert=/ca.pem", "/ca.pem").unwrap();
        let e = with("host=h sslrootcert=/a.pem", "/b.pem").err().unwrap();
        assert!(
            e.contains("connection string's sslrootcert is \"/a.pem\""),
            "{e}"
        );
        assert_eq!(
            with("host=h sslmode=require", "system").err().unwrap(),
            "sslmode=require may not be used with sslRootCert 'system'; use sslmode=verify-full"
        );
        assert_eq!(with("host=h", "").err().unwrap(), "must not be empty");
    }

    #[test]
    fn the_rest_of_the_string_is_kept_as_written() {
        assert_eq!(
            take_tls_params("postgres://u@h/d?sslmode=require")
                .unwrap()
                .0,
            "postgres://u@h/d"
        );
        assert_eq!(
            take_tls_params("postgres://u@h/d?a=1&sslrootcert=x&b=2&sslmode=require")
                .unwrap()
                .0,
            "postgres://u@h/d?a=1&b=2"
        );
        assert_eq!(
            take_tls_params("host=h sslmode=require password='a b'")
                .unwrap()
                .0,
            "host=h   password='a b'"
        );
        // Strings these parsers cannot follow are left for tokio-postgres to refuse.
        assert_eq!(
            take_tls_params("host=h password='open").unwrap().0,
            "host=h password='open"
        );
        assert!(ConnectionConfig::parse("host=h sslmode=require password='open", T).is_err());
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = ConnectionConfig::parse("postgres://u@127.0.0.1/d", T).unwrap();
        assert_eq!(c.pg.get_application_name(), Some("audit-batcher"));
        assert_eq!(c.pg.get_connect_timeout(), Some(&T));
    }
}
