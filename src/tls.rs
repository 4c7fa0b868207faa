//! HTTPS: the rustls configuration made from `--tls-cert` and `--tls-key`,
//! and the one place that reads those files. TLS 1.2 and 1.3 on the ring
//! provider, ALPN `http/1.1` (the server speaks nothing else).
//!
//! A process holds its configuration in `Certs`, which a SIGHUP in a
//! single process swaps for a freshly loaded one; connections take the
//! current one as they are accepted. In cluster mode each worker loads the
//! files as it starts, so a reload's new generation serves the new files,
//! and files that do not load fail the new workers and keep the old ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// `--tls-cert` and `--tls-key`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The serving configuration, replaceable while connections use the old one.
pub struct Certs {
    files: TlsFiles,
    /// Read once per accepted connection; written by a SIGHUP reload.
    current: RwLock<TlsAcceptor>,
}

impl Certs {
    /// Loads the files; the error is a sentence for the operator.
    pub fn load(files: &TlsFiles) -> Result<Certs, String> {
        Ok(Certs {
            current: RwLock::new(acceptor(files)?),
            files: files.clone(),
        })
    }

    /// Reads the files again; on error the previous configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = acceptor(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The configuration a new connection gets.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").field("files", &self.files).finish()
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "--tls-key {}: no PEM private key could be read ({e})",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {shown}: cannot read PEM certificates ({e})"))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {shown}: no certificate in the file (expected PEM \
             '-----BEGIN CERTIFICATE-----' blocks)"
        ));
    }
    Ok(chain)
}
