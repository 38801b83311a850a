//! `smart-server token …` and `smart-server user …`: provisioning on a data directory no server is
//! running on (sled admits one process; a running server answers with a clear error).

use std::io::{BufRead as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use smart_proto::Serial;

use crate::auth::{Tokens, Users};
use crate::config::{Command, Config, TokenAction, UserAction};

/// Run a management command against `config.data_dir`.
pub fn run_command(config: &Config, command: &Command) -> anyhow::Result<()> {
    let db = open_db(&config.data_dir)?;
    match command {
        Command::Token { action } => token(&db, action),
        Command::User { action } => user(&db, action),
    }
}

fn open_db(dir: &Path) -> anyhow::Result<sled::Db> {
    let path = dir.join("sled");
    sled::Config::new().path(&path).open().map_err(|e| {
        let busy = matches!(&e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
            || e.to_string().contains("lock");
        if busy {
            anyhow::anyhow!(
                "{} is in use by a running server: stop it to provision (provisioning through a running server is not built yet)",
                dir.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("opening the store in {}", path.display()))
        }
    })
}

fn token(db: &sled::Db, action: &TokenAction) -> anyhow::Result<()> {
    let tokens = Tokens::open(db)?;
    let mut stdout = std::io::stdout().lock();
    match action {
        TokenAction::Issue { serial } => {
            let serial = Serial::new(serial).context("bad serial")?;
            let token = tokens.issue(&serial)?;
            eprintln!("issued a new token for {serial}; any earlier one is revoked");
            writeln!(stdout, "{token}")?;
        }
        TokenAction::Revoke { serial } => {
            if !tokens.revoke(serial)? {
                bail!("{serial:?} has no token");
            }
            eprintln!("revoked the token of {serial}");
        }
        TokenAction::List => {
            writeln!(stdout, "SERIAL\tCREATED_MS\tLAST_USED_MS")?;
            for t in tokens.list()? {
                let used = t
                    .last_used_ms
                    .map_or("never".to_owned(), |ms| ms.to_string());
                writeln!(stdout, "{}\t{}\t{used}", t.serial, t.created_ms)?;
            }
        }
        TokenAction::Bulk { out, serials } => {
            let serials = if serials.is_empty() {
                let mut read = Vec::new();
                for line in std::io::stdin().lock().lines() {
                    let line = line.context("reading serials from stdin")?;
                    let line = line.trim();
                    if !line.is_empty() {
                        read.push(line.to_owned());
                    }
                }
                read
            } else {
                serials.clone()
            };
            let serials = serials
                .iter()
                .map(|s| Serial::new(s).with_context(|| format!("bad serial {s:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut file = create_private(out)?;
            let mut text = String::new();
            for serial in &serials {
                let token = tokens.issue(serial)?;
                text.push_str(serial.as_str());
                text.push(' ');
                text.push_str(&token);
                text.push('\n');
            }
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "issued {} tokens; `SERIAL TOKEN` lines in {}",
                serials.len(),
                out.display()
            );
        }
    }
    Ok(())
}

fn user(db: &sled::Db, action: &UserAction) -> anyhow::Result<()> {
    let users = Users::open(db)?;
    let mut stdout = std::io::stdout().lock();
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
            users.add(name, password, *role, scope_owner.clone())?;
            eprintln!("user {name} ({}) saved", role.as_str());
        }
        UserAction::Remove { name } => {
            if !users.remove(name)? {
                bail!("no user {name:?}");
            }
            eprintln!("user {name} removed");
        }
        UserAction::List => {
            writeln!(stdout, "NAME\tROLE\tSCOPE_OWNER\tCREATED_MS")?;
            for (name, user) in users.list()? {
                let scope = user.scope_owner.as_deref().unwrap_or("-");
                writeln!(
                    stdout,
                    "{name}\t{}\t{scope}\t{}",
                    user.role.as_str(),
                    user.created_ms
                )?;
            }
        }
    }
    Ok(())
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
