//! What TLS a connection asks for and what it checks of the server: libpq's `sslmode` and `sslrootcert`,
//! read from the connection string and the `sslRootCert` option.

use tokio_postgres::config::SslMode;

use crate::pg::conninfo::{ConnInfo, Item};

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

/// Where the CA certificates' file (or `system`) was named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// `sslrootcert` in the connection string.
    ConnectionString,
    /// The `sslRootCert` option.
    SslRootCertOption,
}

impl CaSource {
    /// The option an error about the file is reported against: `connectionString` or `sslRootCert`.
    pub fn option(self) -> &'static str {
        match self {
            CaSource::ConnectionString => "connectionString",
            CaSource::SslRootCertOption => "sslRootCert",
        }
    }

    /// The setting's name as a message gives it: `sslrootcert` or `sslRootCert`.
    pub fn setting(self) -> &'static str {
        match self {
            CaSource::ConnectionString => "sslrootcert",
            CaSource::SslRootCertOption => "sslRootCert",
        }
    }
}

/// The CA certificates a server's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file of CA certificates, and where its path was given.
    File { path: String, source: CaSource },
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
    /// `sslrootcert` as given (a path, or `system`), and where.
    root_cert: Option<(String, CaSource)>,
}

impl TlsSettings {
    const SYSTEM: &'static str = "system";

    /// Takes `sslmode` and `sslrootcert` out of a connection string (URL query parameters or `key=value`
    /// pairs; the last of each counts), returning the rest as written (see [`ConnInfo::without`]):
    /// tokio-postgres knows neither verify-ca/verify-full nor sslrootcert. A string off the grammar is
    /// returned whole, with no TLS settings, for tokio-postgres to refuse. The error says what is wrong
    /// with the settings.
    pub fn take_from(conn: &ConnInfo) -> Result<(String, TlsSettings), String> {
        let mut tls = TlsSettings::default();
        if !conn.complete {
            return Ok((conn.text().to_owned(), tls));
        }
        let is_tls = |item: &Item| item.is("sslmode") || item.is("sslrootcert");
        for item in conn.items.iter().filter(|item| is_tls(item)) {
            let value = item
                .value()
                .map_err(|_| "has a URL parameter that is not UTF-8 once decoded".to_owned())?;
            if item.is("sslmode") {
                tls.requested = Some(TlsMode::parse(&value)?);
            } else if value.is_empty() {
                tls.root_cert = None;
            } else {
                tls.root_cert = Some((value.into_owned(), CaSource::ConnectionString));
            }
        }
        tls.check()?;
        Ok((conn.without(is_tls), tls))
    }

    /// Adds the `sslRootCert` option (a PEM file's path, or `system`). The error, about that option, says
    /// why it cannot be used.
    pub fn with_root_cert_option(mut self, path: &str) -> Result<TlsSettings, String> {
        match &self.root_cert {
            Some((given, _)) if given != path => {
                return Err(format!(
                    "is {path:?}, but the connection string's sslrootcert is {given:?}; give one of them"
                ))
            }
            _ if path.is_empty() => return Err("must not be empty".into()),
            _ => {}
        }
        self.root_cert = Some((path.to_owned(), CaSource::SslRootCertOption));
        self.check()?;
        Ok(self)
    }

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
        let roots = self.root_cert.as_ref().map(|(root, source)| {
            if root == Self::SYSTEM {
                RootCerts::WellKnown
            } else {
                RootCerts::File {
                    path: root.clone(),
                    source: *source,
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
            Some((root, source)) if root == Self::SYSTEM && self.mode() != TlsMode::VerifyFull => {
                let given = match source {
                    CaSource::ConnectionString => "sslrootcert=system",
                    CaSource::SslRootCertOption => "sslRootCert 'system'",
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pg::config::ConnectionConfig;

    const T: Duration = Duration::from_secs(5);

    fn tls(conn: &str) -> (ConnectionConfig, TlsMode, Verification) {
        let c = ConnectionConfig::parse(conn, T).unwrap();
        let (mode, verification) = (c.tls.mode(), c.tls.verification());
        assert_eq!(c.pg.get_ssl_mode(), mode.ssl_mode(), "{conn}");
        (c, mode, verification)
    }

    fn file(path: &str) -> RootCerts {
        RootCerts::File {
            path: path.into(),
            source: CaSource::ConnectionString,
        }
    }

    fn take_tls_params(conn: &str) -> Result<(String, TlsSettings), String> {
        TlsSettings::take_from(&ConnInfo::parse(conn))
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
        assert_eq!(
            err("postgres://h/d?sslmode=%ff"),
            "has a URL parameter that is not UTF-8 once decoded"
        );
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
                source: CaSource::SslRootCertOption,
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
}
