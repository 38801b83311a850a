//! How the examples reach a server that requires credentials or TLS: `--ca-cert` (wss with a private
//! certificate authority), `--token-file` (the `SERIAL TOKEN` lines of `smart-server token bulk`), and
//! `--user` with the password in `SMART_PASSWORD` (dashboards). Set once per process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::Ws;

/// The flags, flattened into each example's arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccessFlags {
    /// PEM certificate(s) to trust for `wss://` URLs (e.g. the server's self-signed certificate);
    /// without it, the system's roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// `SERIAL TOKEN` lines (`smart-server token bulk --out FILE`): each device connection presents its
    /// serial's token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// User for dashboard connections (HTTP Basic); the password is read from `SMART_PASSWORD`.
    #[arg(long)]
    pub user: Option<String>,
}

/// What the flags resolve to.
#[derive(Debug, Default)]
struct Access {
    tls: Option<Arc<ClientConfig>>,
    tokens: HashMap<String, String>,
    basic: Option<String>,
}

static ACCESS: OnceLock<Access> = OnceLock::new();

impl AccessFlags {
    /// Read the files and set the process's access once; call before connecting.
    pub fn install(&self) -> Result<()> {
        let tls = self
            .ca_cert
            .as_ref()
            .map(|path| client_config(path))
            .transpose()?;
        let tokens = match &self.token_file {
            Some(path) => read_tokens(path)?,
            None => HashMap::new(),
        };
        let basic = match &self.user {
            Some(user) => {
                let password = std::env::var("SMART_PASSWORD").context(
                    "--user needs the password in the environment variable SMART_PASSWORD",
                )?;
                let pair = format!("{user}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            None => None,
        };
        let _ = ACCESS.set(Access { tls, tokens, basic });
        Ok(())
    }
}

fn read_tokens(path: &std::path::Path) -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tokens = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((serial, token)) = line.trim().split_once(' ') else {
            bail!("{}:{}: expected `SERIAL TOKEN`", path.display(), n + 1);
        };
        tokens.insert(serial.to_owned(), token.trim().to_owned());
    }
    Ok(tokens)
}

fn client_config(path: &std::path::Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("trusting {}", path.display()))?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Open a websocket to `url` within `limit`: as device `serial` (its token, when a token file was
/// given), or as a dashboard (`serial` = `None`: the `--user` login, if any).
pub async fn connect_as(
    url: &str,
    serial: Option<&str>,
    config: WebSocketConfig,
    limit: Duration,
) -> Result<Ws> {
    let access = ACCESS.get_or_init(Access::default);
    let mut request = url
        .into_client_request()
        .with_context(|| format!("bad URL {url}"))?;
    let authorization = match serial {
        Some(serial) if !access.tokens.is_empty() => {
            let Some(token) = access.tokens.get(serial) else {
                bail!("no token for device {serial} in --token-file");
            };
            Some(format!("Bearer {token}"))
        }
        Some(_) => None,
        None => access.basic.clone(),
    };
    if let Some(value) = authorization {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&value).context("credentials are not a valid header")?,
        );
    }
    let connector = access.tls.clone().map(Connector::Rustls);
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let (ws, _response) = tokio::time::timeout(limit, connecting)
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}
