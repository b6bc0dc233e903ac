//! The TLS connector of the pool's connections: rustls (with the `ring` provider), checking what the
//! [`TlsSettings`] ask for.
//!
//! tokio-postgres negotiates (`SslMode`: disable, prefer, require) and `tokio-postgres-rustls` runs the
//! handshake and gives SCRAM its channel binding; this module decides what is checked of the server's
//! certificate (nothing, the chain, or the chain and the host name) and turns handshake failures into
//! messages that say what to do.

use std::io;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::policy::{CaSource, RootCerts, TlsMode, TlsSettings, Verification};

/// Makes the TLS connections of a pool. Cheap to clone; built once, when the sink is made.
#[derive(Clone)]
pub struct TlsConnector {
    inner: MakeRustlsConnect,
    context: Arc<Context>,
}

/// What a failure message needs to know.
struct Context {
    mode: TlsMode,
    /// Whose CAs are trusted, as a message puts it: "in sslRootCert (/etc/ca.pem)".
    trusted: Option<String>,
}

impl TlsConnector {
    /// The connector for these settings. Reads the CA file now (not at each connection), so a missing or
    /// unreadable file fails at construction; the error is `(option, reason)`, the option being where the
    /// file was named.
    pub fn new(settings: &TlsSettings) -> Result<TlsConnector, (&'static str, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let (roots, check_host) = match settings.verification() {
            Verification::None => (None, false),
            Verification::Chain(roots) => (Some(roots), false),
            Verification::ChainAndHost(roots) => (Some(roots), true),
        };
        let trusted = roots.as_ref().map(|roots| match roots {
            RootCerts::File { path, source } => format!("in {} ({path})", source.setting()),
            RootCerts::WellKnown => {
                "among the well-known public CAs (no sslRootCert given: give your CA's certificate file)"
                    .to_owned()
            }
        });
        let store = roots.map(|roots| load_roots(&roots)).transpose()?;
        let verifier = Verifier {
            roots: store.map(Arc::new),
            check_host,
            algorithms,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ("connectionString", format!("cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // As libpq 17 does; required by servers that take a direct TLS connection (sslnegotiation=direct).
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(TlsConnector {
            inner: MakeRustlsConnect::new(config),
            context: Arc::new(Context {
                mode: settings.mode(),
                trusted,
            }),
        })
    }
}

/// The CA certificates to trust.
fn load_roots(roots: &RootCerts) -> Result<RootCertStore, (&'static str, String)> {
    let (path, source) = match roots {
        RootCerts::WellKnown => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
        RootCerts::File { path, source } => (path, *source),
    };
    // The error is about the source's option; within the connection string, it says which part.
    let part = match source {
        CaSource::SslRootCertOption => "",
        CaSource::ConnectionString => "sslrootcert ",
    };
    let fail = |why: String| (source.option(), format!("{part}{path:?} {why}"));
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("is not a PEM file of CA certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "holds no certificate (expected PEM '-----BEGIN CERTIFICATE-----' blocks)".into(),
        ));
    }
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(fail("holds no usable CA certificate".into()));
    }
    Ok(store)
}

/// Checks the server's certificate as the sslmode asks; the handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    /// `None`: the certificate is not checked (prefer and require without a CA file).
    roots: Option<Arc<RootCertStore>>,
    check_host: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            if self.check_host {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl Context {
    /// A handshake failure, said plainly: what went wrong and what to check.
    fn describe(&self, host: &str, error: io::Error) -> io::Error {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return error;
        };
        let mode = self.mode.as_str();
        let message = match tls {
            rustls::Error::InvalidCertificate(
                e @ (CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. }),
            ) => format!(
                "server certificate not valid for host {host:?} (sslmode={mode} checks the host name): {e}"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => format!(
                "server certificate not trusted (sslmode={mode}): it is not issued by a CA {}",
                self.trusted.as_deref().unwrap_or("trusted here")
            ),
            rustls::Error::InvalidCertificate(e) => {
                format!("server certificate not trusted (sslmode={mode}): {e}")
            }
            rustls::Error::AlertReceived(alert) => {
                format!("the server refused the TLS handshake (alert {alert:?})")
            }
            other => format!("TLS handshake failed: {other}"),
        };
        io::Error::new(error.kind(), message)
    }
}

impl<S> MakeTlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Connect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(Connect {
            inner: <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(
                &mut self.inner,
                host,
            )?,
            host: host.to_owned(),
            context: Arc::clone(&self.context),
        })
    }
}

/// One connection's handshake, its failure described by [`Context::describe`].
pub struct Connect<C> {
    inner: C,
    host: String,
    context: Arc<Context>,
}

impl<S, C> TlsConnect<S> for Connect<C>
where
    C: TlsConnect<S, Error = io::Error>,
    C::Future: Send + 'static,
{
    type Stream = C::Stream;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<C::Stream>>;

    fn connect(self, stream: S) -> Self::Future {
        let Connect {
            inner,
            host,
            context,
        } = self;
        let handshake = inner.connect(stream);
        async move { handshake.await.map_err(|e| context.describe(&host, e)) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::ServerConfig;
    use tokio::io::DuplexStream;
    use tokio_postgres::config::Host;

    use super::*;
    use crate::pg::config::ConnectionConfig;

    /// A CA, a server certificate it issued for `localhost` and 127.0.0.1, and a second CA that issued
    /// nothing here; the CA certificates in PEM files.
    struct Pki {
        dir: PathBuf,
        server: Arc<ServerConfig>,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = std::env::temp_dir().join(format!(
                "audit-batcher-tls-test-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let ca = make_ca("audit-batcher test CA");
            let other = make_ca("some other CA");
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "localhost");
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
            std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
            let server = ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
            Pki {
                dir,
                server: Arc::new(server),
            }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).to_string_lossy().into_owned()
        }

        /// Connects with `conn` to the test server over an in-memory pipe; the handshake's outcome.
        async fn handshake(&self, conn: &str) -> Result<(), String> {
            let config = ConnectionConfig::parse(conn, Duration::from_secs(5)).unwrap();
            let Host::Tcp(host) = &config.pg.get_hosts()[0] else {
                panic!("a TCP host")
            };
            let mut connector = TlsConnector::new(&config.tls).map_err(|(_, e)| e)?;
            let (client, server) = tokio::io::duplex(64 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server));
            let accept = tokio::spawn(async move { acceptor.accept(server).await.map(drop) });
            let connect = <TlsConnector as MakeTlsConnect<DuplexStream>>::make_tls_connect(
                &mut connector,
                host,
            )
            .unwrap();
            match connect.connect(client).await {
                Ok(stream) => {
                    // Kept open until the server has read the client's last handshake message.
                    let accepted = accept.await.unwrap();
                    drop(stream);
                    accepted.map_err(|e| format!("the server side failed: {e}"))
                }
                Err(e) => Err(e.to_string()),
            }
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn verify_full_checks_the_chain_and_the_host_name() {
        let pki = Pki::new();
        let ca = pki.path("ca.pem");
        pki.handshake(&format!(
            "host=localhost sslmode=verify-full sslrootcert={ca}"
        ))
        .await
        .unwrap();
        pki.handshake(&format!(
            "postgres://u@127.0.0.1/d?sslmode=verify-full&sslrootcert={ca}"
        ))
        .await
        .unwrap();
        let err = pki
            .handshake(&format!(
                "host=db.example hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"
            ))
            .await
            .unwrap_err();
        assert!(
            err.contains("server certificate not valid for host \"db.example\"")
                && err.contains("sslmode=verify-full"),
            "{err}"
        );
        let other = pki.path("other-ca.pem");
        let err = pki
            .handshake(&format!(
                "host=localhost sslmode=verify-full sslrootcert={other}"
            ))
            .await
            .unwrap_err();
        assert!(
            err.starts_with("server certificate not trusted (sslmode=verify-full)")
                && err.contains(&format!("in sslrootcert ({other})")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn verify_ca_checks_the_chain_but_not_the_host_name() {
        let pki = Pki::new();
        let ca = pki.path("ca.pem");
        pki.handshake(&format!(
            "host=db.example sslmode=verify-ca sslrootcert={ca}"
        ))
        .await
        .unwrap();
        let other = pki.path("other-ca.pem");
        let err = pki
            .handshake(&format!(
                "host=localhost sslmode=verify-ca sslrootcert={other}"
            ))
            .await
            .unwrap_err();
        assert!(err.contains("server certificate not trusted"), "{err}");
    }

    #[tokio::test]
    async fn without_a_ca_file_verify_modes_trust_only_the_public_cas() {
        let pki = Pki::new();
        for mode in ["verify-ca", "verify-full"] {
            let err = pki
                .handshake(&format!("host=localhost sslmode={mode}"))
                .await
                .unwrap_err();
            assert!(
                err.contains("server certificate not trusted")
                    && err.contains("well-known public CAs"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn require_and_prefer_encrypt_without_checking_unless_given_a_ca_file() {
        let pki = Pki::new();
        for mode in ["require", "prefer"] {
            pki.handshake(&format!("host=db.example sslmode={mode}"))
                .await
                .unwrap();
            // As libpq with a root certificate: the chain is checked (the host name is not).
            let ca = pki.path("ca.pem");
            pki.handshake(&format!("host=db.example sslmode={mode} sslrootcert={ca}"))
                .await
                .unwrap();
            let other = pki.path("other-ca.pem");
            let err = pki
                .handshake(&format!(
                    "host=localhost sslmode={mode} sslrootcert={other}"
                ))
                .await
                .unwrap_err();
            assert!(err.contains("server certificate not trusted"), "{err}");
        }
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_fails_at_construction_naming_its_option() {
        let pki = Pki::new();
        let connector = |conn: &str, option: Option<&str>| {
            let mut config = ConnectionConfig::parse(conn, Duration::from_secs(5)).unwrap();
            if let Some(path) = option {
                config = config.with_ssl_root_cert(path).unwrap();
            }
            TlsConnector::new(&config.tls).map(drop)
        };
        let missing = pki.path("missing.pem");
        let (option, err) = connector("host=h sslmode=verify-full", Some(&missing)).unwrap_err();
        assert_eq!(option, "sslRootCert");
        assert!(
            err.starts_with(&format!("{missing:?} cannot be read")),
            "{err}"
        );
        let empty = pki.path("empty.pem");
        let (option, err) =
            connector(&format!("host=h sslmode=require sslrootcert={empty}"), None).unwrap_err();
        assert_eq!(option, "connectionString");
        assert!(
            err.starts_with(&format!("sslrootcert {empty:?} holds no certificate")),
            "{err}"
        );
        // Not read when nothing is checked.
        connector("host=h sslmode=require", None).unwrap();
        connector(
            &format!("host=h sslmode=disable sslrootcert={missing}"),
            None,
        )
        .unwrap();
    }
}
