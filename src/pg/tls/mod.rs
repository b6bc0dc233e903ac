//! TLS for the pool's connections: what libpq's `sslmode` and `sslrootcert` ask for ([`policy`]), and
//! the rustls connector that does it ([`connector`]).

mod connector;
mod policy;

pub use self::connector::TlsConnector;
pub use self::policy::{CaSource, RootCerts, TlsMode, TlsSettings, Verification};
