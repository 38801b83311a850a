//! `smart-server token …` and `smart-server user …`: provisioning (and `history-fill`, the history's
//! benchmark, in `history::fill`). On a data directory no server runs
//! on, the command opens the store itself; while a server holds it (sled admits one process), the
//! command goes through that server's admin API on loopback, with the secret the server left in the
//! data dir (`admin.json`, 0600).

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use smart_proto::Serial;
use warp::http::{Method, Request, header};

use crate::auth::{ADMIN_FILE, Tokens, Users, clustered};
use crate::config::{Command, Config, TokenAction, UserAction};

/// Run a management command against `config.data_dir`.
pub async fn run_command(config: &Config, command: &Command) -> anyhow::Result<()> {
    if let Command::HistoryFill {
        devices,
        hours,
        interval_secs,
    } = *command
    {
        let dir = config.data_dir.clone();
        return tokio::task::spawn_blocking(move || {
            crate::history::fill::run(&dir, devices, hours, interval_secs)
        })
        .await
        .context("history fill task")?;
    }
    let backend = Backend::open(&config.data_dir)?;
    match command {
        Command::Token { action } => token(&backend, action).await,
        Command::User { action } => user(&backend, action).await,
        Command::HistoryFill { .. } => Ok(()),
    }
}

/// Where the command acts: the store itself, or the server holding it.
enum Backend {
    Local {
        tokens: Tokens,
        users: Users,
        /// The Redis whose credentials these follow (the server last ran with `--redis`).
        clustered: Option<String>,
    },
    Remote {
        addr: SocketAddr,
        secret: String,
    },
}

#[derive(Deserialize)]
struct AdminFile {
    addr: Option<SocketAddr>,
    secret: String,
}

impl Backend {
    fn open(dir: &Path) -> anyhow::Result<Backend> {
        let path = dir.join("sled");
        match sled::Config::new().path(&path).open() {
            Ok(db) => Ok(Backend::Local {
                tokens: Tokens::open(&db)?,
                users: Users::open(&db)?,
                clustered: clustered(&db)?,
            }),
            Err(e) if e.to_string().contains("lock") => {
                let file = dir.join(ADMIN_FILE);
                let text = std::fs::read_to_string(&file).with_context(|| {
                    format!(
                        "{} is in use by a running server, and its admin file {} cannot be read",
                        dir.display(),
                        file.display()
                    )
                })?;
                let admin: AdminFile = serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", file.display()))?;
                let addr = admin.addr.ok_or_else(|| {
                    anyhow!(
                        "{} is in use by a running server that listens on no loopback address: stop it to provision, or use its /api/admin/ API with an owner's login",
                        dir.display()
                    )
                })?;
                Ok(Backend::Remote {
                    addr,
                    secret: admin.secret,
                })
            }
            Err(e) => {
                Err(anyhow::Error::new(e)
                    .context(format!("opening the store in {}", path.display())))
            }
        }
    }

    /// Refuse to change credentials that follow a cluster's while no server runs: the next start
    /// would make them the cluster's again.
    fn may_change(&self) -> anyhow::Result<()> {
        if let Backend::Local {
            clustered: Some(redis),
            ..
        } = self
        {
            bail!(
                "this data dir's credentials are the cluster's (its server runs with --redis {redis}): change them through a running instance (this command while a server runs on this dir, or /api/admin/ on any instance)"
            );
        }
        Ok(())
    }

    /// A call to the running server's admin API; the JSON answer of a 2xx, else its error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let Backend::Remote { addr, secret } = self else {
            bail!("not a remote backend");
        };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the running server at {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the running server")?;
        tokio::spawn(conn);
        let body = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("building the admin request")?;
        let response = sender
            .send_request(request)
            .await
            .context("calling the running server's admin API")?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the admin answer")?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            let why = value["error"].as_str().unwrap_or("no reason given");
            bail!("the running server refused ({status}): {why}")
        }
    }
}

async fn token(backend: &Backend, action: &TokenAction) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    match action {
        TokenAction::Issue { serial, owner } => {
            let serial = Serial::new(serial).context("bad serial")?;
            let token = match backend {
                Backend::Local { tokens, .. } => {
                    backend.may_change()?;
                    tokens.issue(&serial, owner.as_deref())?
                }
                Backend::Remote { .. } => {
                    let body = owner.as_ref().map(|owner| json!({ "owner": owner }));
                    let answer = backend
                        .call(Method::POST, &format!("/api/admin/tokens/{serial}"), body)
                        .await?;
                    string(&answer["token"])?
                }
            };
            eprintln!("issued a new token for {serial}; any earlier one is revoked");
            writeln!(stdout, "{token}")?;
        }
        TokenAction::Revoke { serial } => {
            match backend {
                Backend::Local { tokens, .. } => {
                    backend.may_change()?;
                    if !tokens.revoke(serial)? {
                        bail!("{serial:?} has no token");
                    }
                }
                Backend::Remote { .. } => {
                    backend
                        .call(Method::DELETE, &format!("/api/admin/tokens/{serial}"), None)
                        .await?;
                }
            }
            eprintln!("revoked the token of {serial}");
        }
        TokenAction::List => {
            let rows: Vec<(String, u64, Option<u64>, Option<String>)> = match backend {
                Backend::Local { tokens, .. } => tokens
                    .list()?
                    .into_iter()
                    .map(|t| (t.serial, t.created_ms, t.last_used_ms, t.owner))
                    .collect(),
                Backend::Remote { .. } => {
                    let answer = backend.call(Method::GET, "/api/admin/tokens", None).await?;
                    answer
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|t| {
                            (
                                t["serial"].as_str().unwrap_or_default().to_owned(),
                                t["created_ms"].as_u64().unwrap_or_default(),
                                t["last_used_ms"].as_u64(),
                                t["owner"].as_str().map(str::to_owned),
                            )
                        })
                        .collect()
                }
            };
            writeln!(stdout, "SERIAL\tCREATED_MS\tLAST_USED_MS\tOWNER")?;
            for (serial, created, used, owner) in rows {
                let used = used.map_or("never".to_owned(), |ms| ms.to_string());
                let owner = owner.as_deref().unwrap_or("-");
                writeln!(stdout, "{serial}\t{created}\t{used}\t{owner}")?;
            }
        }
        TokenAction::Bulk {
            out,
            serials,
            owner,
        } => {
            let serials = if serials.is_empty() {
                read_serials()?
            } else {
                serials.clone()
            };
            let serials = serials
                .iter()
                .map(|s| Serial::new(s).with_context(|| format!("bad serial {s:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut file = create_private(out)?;
            let issued = match backend {
                Backend::Local { tokens, .. } => {
                    backend.may_change()?;
                    tokens.issue_many(&serials, owner.as_deref())?
                }
                Backend::Remote { .. } => {
                    let names: Vec<&str> = serials.iter().map(Serial::as_str).collect();
                    let answer = backend
                        .call(
                            Method::POST,
                            "/api/admin/tokens",
                            Some(json!({ "serials": names, "owner": owner })),
                        )
                        .await?;
                    answer
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|t| string(&t["token"]))
                        .collect::<anyhow::Result<Vec<_>>>()?
                }
            };
            let mut text = String::new();
            for (serial, token) in serials.iter().zip(&issued) {
                text.push_str(serial.as_str());
                text.push(' ');
                text.push_str(token);
                text.push('\n');
            }
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "issued {} tokens; `SERIAL TOKEN` lines in {}",
                issued.len(),
                out.display()
            );
        }
    }
    Ok(())
}

async fn user(backend: &Backend, action: &UserAction) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    match action {
        UserAction::Add {
            name,
            role,
            scope_owner,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']);
            match backend {
                Backend::Local { users, .. } => {
                    backend.may_change()?;
                    users.add(name, password, *role, scope_owner.clone())?;
                }
                Backend::Remote { .. } => {
                    let body = json!({"password": password, "role": role.as_str(), "scope_owner": scope_owner});
                    backend
                        .call(Method::PUT, &format!("/api/admin/users/{name}"), Some(body))
                        .await?;
                }
            }
            eprintln!("user {name} ({}) saved", role.as_str());
        }
        UserAction::Remove { name } => {
            match backend {
                Backend::Local { users, .. } => {
                    backend.may_change()?;
                    if !users.remove(name)? {
                        bail!("no user {name:?}");
                    }
                }
                Backend::Remote { .. } => {
                    backend
                        .call(Method::DELETE, &format!("/api/admin/users/{name}"), None)
                        .await?;
                }
            }
            eprintln!("user {name} removed");
        }
        UserAction::List => {
            let rows: Vec<(String, String, Option<String>, u64)> = match backend {
                Backend::Local { users, .. } => users
                    .list()?
                    .into_iter()
                    .map(|(name, u)| {
                        (
                            name,
                            u.role.as_str().to_owned(),
                            u.scope_owner,
                            u.created_ms,
                        )
                    })
                    .collect(),
                Backend::Remote { .. } => {
                    let answer = backend.call(Method::GET, "/api/admin/users", None).await?;
                    answer
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|u| {
                            (
                                u["name"].as_str().unwrap_or_default().to_owned(),
                                u["role"].as_str().unwrap_or_default().to_owned(),
                                u["scope_owner"].as_str().map(str::to_owned),
                                u["created_ms"].as_u64().unwrap_or_default(),
                            )
                        })
                        .collect()
                }
            };
            writeln!(stdout, "NAME\tROLE\tSCOPE_OWNER\tCREATED_MS")?;
            for (name, role, scope, created) in rows {
                let scope = scope.as_deref().unwrap_or("-");
                writeln!(stdout, "{name}\t{role}\t{scope}\t{created}")?;
            }
        }
    }
    Ok(())
}

fn string(value: &Value) -> anyhow::Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the running server's answer has no token"))
}

/// Serials on stdin, one per line (blank lines skipped).
fn read_serials() -> anyhow::Result<Vec<String>> {
    let mut read = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading serials from stdin")?;
        let line = line.trim();
        if !line.is_empty() {
            read.push(line.to_owned());
        }
    }
    Ok(read)
}

/// A new file only its owner may read.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))
}
