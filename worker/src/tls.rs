//! TLS to the hub, for both of the worker's connections (rustls, with the
//! ring provider).
//!
//! ```text
//!  source.url ?sslmode=…&sslrootcert=… ──> ConnectOptions ──client_config()──> rustls ClientConfig
//!                                                                              (verifier per mode)
//!   hub.rs     tokio-postgres + tokio-postgres-rustls: SSLRequest, handshake, startup
//!   source.rs  SSLRequest ──'S'──> handshake (tokio-rustls) ──> startup message
//!                         ──'N'──> plain (prefer) | TlsError (require and up)
//! ```
//!
//! What each mode checks, as in libpq:
//!
//! | sslmode     | TLS                          | the server's certificate                        |
//! |-------------|------------------------------|-------------------------------------------------|
//! | disable     | never                        | -                                               |
//! | prefer      | if the server offers it      | not checked                                     |
//! | require     | mandatory                    | not checked; with sslrootcert, as verify-ca     |
//! | verify-ca   | mandatory                    | chain to a CA of sslrootcert                    |
//! | verify-full | mandatory                    | chain, and it names the host                    |
//!
//! A Unix-socket host never uses TLS. A failed handshake (a certificate
//! that does not verify, a server without TLS where it is required, an
//! unreadable sslrootcert) is [`Cause::Tls`]: the worker stops, since every
//! destination depends on the hub and retrying cannot help. A connection
//! lost during the handshake stays a transient I/O error.

use crate::error::{Cause, Error};
use crate::source::{ConnectOptions, SourceError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// libpq's `sslmode`, the values this worker supports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses a value; the error says why it is refused.
    pub fn parse(s: &str) -> Result<SslMode, String> {
        if let Some(m) = SslMode::ALL.into_iter().find(|m| m.as_str() == s) {
            return Ok(m);
        }
        let names: Vec<&str> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
        Err(if s == "allow" {
            // libpq's allow tries plain first: an active attacker can always
            // force plaintext. Refused rather than quietly mapped.
            "sslmode \"allow\" is not supported (it falls back to plaintext); use prefer, or require and up".into()
        } else {
            format!("sslmode {s:?} is not one of {}", names.join(", "))
        })
    }

    /// Whether the mode needs `sslrootcert` (no system CA store is used).
    pub const fn needs_root_cert(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// What the server's certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: encryption against passive listeners only.
    Nothing,
    /// A chain to a CA of `sslrootcert`, whatever host it names.
    Chain,
    /// The chain, and the certificate names the host.
    ChainAndHost,
}

/// Whether a connection asks for TLS, and whether it must get it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiate {
    Plain,
    /// TLS if the server offers it, plain otherwise.
    Try,
    Must,
}

impl ConnectOptions {
    pub fn verify(&self) -> Verify {
        match self.sslmode {
            _ if self.negotiate() == Negotiate::Plain => Verify::Nothing,
            SslMode::Disable | SslMode::Prefer => Verify::Nothing,
            SslMode::Require if self.sslrootcert.is_none() => Verify::Nothing,
            SslMode::Require | SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::ChainAndHost,
        }
    }

    pub fn negotiate(&self) -> Negotiate {
        match self.sslmode {
            _ if self.host.starts_with('/') => Negotiate::Plain,
            SslMode::Disable => Negotiate::Plain,
            SslMode::Prefer => Negotiate::Try,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Negotiate::Must,
        }
    }

    /// `host:port (sslmode=…, sslrootcert=…)`, for messages.
    fn tls_target(&self) -> String {
        let root = self
            .sslrootcert
            .as_deref()
            .map(|r| format!(", sslrootcert={r:?}"))
            .unwrap_or_default();
        format!(
            "{}:{} (sslmode={}{root})",
            self.host,
            self.port,
            self.sslmode.as_str()
        )
    }
}

/// A TLS failure retrying cannot fix: always [`Cause::Tls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub message: String,
}

impl TlsError {
    /// The server answered the SSLRequest with 'N'.
    pub fn refused(o: &ConnectOptions) -> TlsError {
        TlsError {
            message: format!(
                "the server at {} does not support TLS, but sslmode={} requires it",
                o.tls_target(),
                o.sslmode.as_str()
            ),
        }
    }

    fn handshake(o: &ConnectOptions, e: &rustls::Error) -> TlsError {
        let what = match e {
            rustls::Error::InvalidCertificate(_) => "certificate verify failed: ",
            _ => "",
        };
        TlsError {
            message: format!("TLS handshake with {} failed: {what}{e}", o.tls_target()),
        }
    }
}

impl From<TlsError> for SourceError {
    fn from(e: TlsError) -> Self {
        SourceError::Definite {
            cause: Cause::Tls,
            code: None,
            message: e.message,
            hint: Cause::Tls.hint().into(),
        }
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Error::Definite {
            message: e.message,
            hint: Cause::Tls.hint().into(),
            cause: Cause::Tls,
        }
    }
}

/// The rustls configuration for `o`: its verifier follows [`Verify`].
/// Reads `sslrootcert` (each call: a renewed CA file is picked up at the
/// next connection).
pub fn client_config(o: &ConnectOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            message: format!("TLS setup: {e}"),
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = match o.verify() {
        Verify::Nothing => Arc::new(AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }),
        verify => {
            let path = o.sslrootcert.as_deref().ok_or_else(|| TlsError {
                message: format!("sslmode={} needs sslrootcert", o.sslmode.as_str()),
            })?;
            let webpki = webpki(root_store(path)?, provider)?;
            if verify == Verify::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    // "dangerous" in rustls' terms: a verifier of our own, for every mode
    // (for verify-full it is webpki's own).
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

fn webpki(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError {
            message: format!("TLS setup: {e}"),
        })
}

/// The CA certificates of a PEM file; none is an error.
fn root_store(path: &str) -> Result<RootCertStore, TlsError> {
    let bad = |why: String| TlsError {
        message: format!("sslrootcert {path:?}: {why}"),
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(pem_error(e)))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(pem_error(e)))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate cannot be used as a CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(roots)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot be read: {io}"),
        other => format!("is not a valid PEM file: {other}"),
    }
}

/// The name the certificate is checked against (and sent as SNI when it
/// is a DNS name).
fn server_name(o: &ConnectOptions) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(o.host.clone()).map_err(|e| TlsError {
        message: format!("host {:?} cannot be used for TLS: {e}", o.host),
    })
}

/// The TLS handshake on an open stream, after the server answered 'S'.
/// A certificate or protocol failure is a [`TlsError`]; a lost connection
/// stays transient.
pub async fn handshake<S>(
    stream: S,
    o: &ConnectOptions,
) -> Result<tokio_rustls::client::TlsStream<S>, SourceError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(client_config(o)?);
    connector
        .connect(server_name(o)?, stream)
        .await
        .map_err(|e| match rustls_error(&e) {
            Some(r) => TlsError::handshake(o, r).into(),
            None => e.into(),
        })
}

/// The connector of the ordinary (tokio-postgres) connections, and the
/// `sslmode` tokio-postgres is given: it knows disable, prefer and require;
/// the verifier does the rest.
pub fn postgres_connector(
    o: &ConnectOptions,
) -> Result<
    (
        tokio_postgres_rustls::MakeRustlsConnect,
        tokio_postgres::config::SslMode,
    ),
    TlsError,
> {
    use tokio_postgres::config::SslMode as Pg;
    let mode = match o.negotiate() {
        Negotiate::Plain => Pg::Disable,
        Negotiate::Try => Pg::Prefer,
        Negotiate::Must => Pg::Require,
    };
    let config = client_config(o)?;
    Ok((
        tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone()),
        mode,
    ))
}

/// What tokio-postgres says when the server answers 'N' under require
/// (connect_tls.rs); it has no error kind for it.
const POSTGRES_NO_TLS: &str = "server does not support TLS";

/// The TLS failure in a tokio-postgres connection error, if it is one.
pub fn postgres_failure(e: &tokio_postgres::Error, o: &ConnectOptions) -> Option<TlsError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(rustls_error)
            .or_else(|| err.downcast_ref::<rustls::Error>())
        {
            return Some(TlsError::handshake(o, r));
        }
        if err.to_string() == POSTGRES_NO_TLS {
            return Some(TlsError::refused(o));
        }
        current = err.source();
    }
    None
}

/// tokio-rustls reports rustls' errors as I/O errors wrapping them.
fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// `require` without `sslrootcert` (and `prefer`): any certificate, but the
/// handshake's signatures are still checked against it.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: webpki's verification, less the host name. webpki checks
/// the chain (and validity dates) before the name, so a name error means
/// the chain verified.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Makes ring the process's rustls provider. Both ring and aws-lc-rs are
/// built in (tiberius needs the latter's feature), so libraries that ask
/// rustls for the process default (async-nats, tiberius) would otherwise
/// find none and panic. Safe to call more than once.
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> ConnectOptions {
        ConnectOptions::from_url(url, None).unwrap()
    }

    #[test]
    fn each_mode_verifies_what_libpq_does() {
        let v = |q: &str| opts(&format!("postgres://u@db.example:5432/d?{q}")).verify();
        assert_eq!(v(""), Verify::Nothing);
        assert_eq!(v("sslmode=prefer&sslrootcert=/ca.pem"), Verify::Nothing);
        assert_eq!(v("sslmode=require"), Verify::Nothing);
        assert_eq!(v("sslmode=require&sslrootcert=/ca.pem"), Verify::Chain);
        assert_eq!(v("sslmode=verify-ca&sslrootcert=/ca.pem"), Verify::Chain);
        assert_eq!(
            v("sslmode=verify-full&sslrootcert=/ca.pem"),
            Verify::ChainAndHost
        );
    }

    #[test]
    fn a_unix_socket_never_uses_tls() {
        let n = |url: &str| opts(url).negotiate();
        let unix = opts("postgres://u@/d?host=%2Frun%2Fpg&sslmode=verify-full&sslrootcert=/no.pem");
        assert_eq!(
            (unix.negotiate(), unix.verify()),
            (Negotiate::Plain, Verify::Nothing)
        );
        // Its sslrootcert is not even read.
        assert!(client_config(&unix).is_ok());
        assert_eq!(n("postgres://u@h/d?sslmode=disable"), Negotiate::Plain);
        assert_eq!(n("postgres://u@h/d"), Negotiate::Try);
        assert_eq!(n("postgres://u@h/d?sslmode=require"), Negotiate::Must);
    }

    #[test]
    fn a_bad_root_file_is_a_tls_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no such 'ca'.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (path, want) in [(&missing, "cannot be read"), (&empty, "no PEM certificate")] {
            let o = opts(&format!(
                "postgres://u@h/d?sslmode=verify-ca&sslrootcert={}",
                path.display()
            ));
            let e = client_config(&o).unwrap_err();
            assert!(
                e.message.contains(want) && e.message.contains(&*path.to_string_lossy()),
                "{e:?}"
            );
            assert_eq!(SourceError::from(e).cause(), Cause::Tls);
        }
        // Without verification the file is not read.
        let o = opts(&format!(
            "postgres://u@h/d?sslmode=prefer&sslrootcert={}",
            missing.display()
        ));
        assert!(client_config(&o).is_ok());
    }
}
