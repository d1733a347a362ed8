//! The user's commands: account, send, sync, list, read, key, kt, block. Each unlocks the
//! profile, calls the client library and hands the result to [`crate::output`].

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use letterme_client::attached::AttachedFile;
use letterme_client::profile::ProfileDir;
use letterme_client::{ClientError, Draft, Unlocked, devices, mime};
use letterme_protocol::Address;
use letterme_protocol::link::LinkCode;

use crate::cli;
use crate::output;

/// Env var holding the passphrase that protects the private keys.
const PASSPHRASE_ENV: &str = "LETTERME_PASSPHRASE";
/// Largest body read from stdin.
const MAX_STDIN_BODY: u64 = 64 * 1024 * 1024;

/// The `--dns` servers, for the client's view of other domains' keys.
pub static CLIENT_DNS: std::sync::OnceLock<Vec<std::net::SocketAddr>> = std::sync::OnceLock::new();

pub fn default_profile() -> PathBuf {
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".letterme"),
        |h| PathBuf::from(h).join(".letterme"),
    )
}

pub async fn account_create(
    dir: ProfileDir,
    address: &str,
    server: &str,
    invite: Option<&str>,
    json: bool,
) -> Result<()> {
    let address = parse_address(address)?;
    if dir.exists() {
        bail!(letterme_client::ClientError::ProfileExists(
            dir.0.display().to_string()
        ));
    }
    let pass = new_passphrase()?;
    let profile = letterme_client::create_account(&dir, &address, server, &pass, invite).await?;
    output::account_created(&dir, &profile, json);
    Ok(())
}

/// `letterme account join ADDRESS --code CODE`.
pub async fn account_join(
    dir: ProfileDir,
    address: &str,
    code: &str,
    server: &str,
    json: bool,
) -> Result<()> {
    let address = parse_address(address)?;
    let code = LinkCode::parse(code)?;
    if dir.exists() {
        bail!(ClientError::ProfileExists(dir.0.display().to_string()));
    }
    let pass = new_passphrase()?;
    if !json && std::io::stderr().is_terminal() {
        eprintln!("waiting for the other device to confirm…");
    }
    let profile = devices::join_account(&dir, &address, server, &code, &pass).await?;
    output::joined(&dir, &profile, json);
    Ok(())
}

/// `letterme device link|list|remove`.
pub async fn device(dir: ProfileDir, action: &cli::DeviceAction) -> Result<()> {
    let online = unlock(dir)?.connect().await?;
    match action {
        cli::DeviceAction::List(json) => output::devices(&online.devices().await?, json.json),
        cli::DeviceAction::Remove { id, json } => {
            let after = online.remove_device(id).await?;
            output::device_removed(id, &after, json.json);
            Ok(())
        }
        cli::DeviceAction::Link(json) => {
            let pending = online.open_link().await?;
            output::link_code(&online.me.profile, &pending, json.json)?;
            let device = online.complete_link(pending).await?;
            // The new device gets this one's mailbox, with progress on a terminal.
            let terminal = !json.json && std::io::stderr().is_terminal();
            let started = std::time::Instant::now();
            let mut progress = |done: usize, total: usize| {
                if terminal {
                    eprint!(
                        "\rsending the mailbox to the new device: {done}/{total} messages ({:.0}/s)",
                        done as f64 / started.elapsed().as_secs_f64().max(0.001)
                    );
                }
            };
            let sent = online.send_history(&device, &mut progress).await;
            if terminal {
                eprintln!();
            }
            output::device_linked(&device, sent?, json.json);
            Ok(())
        }
    }
}

pub async fn send(dir: ProfileDir, args: &cli::SendArgs) -> Result<()> {
    let html = args
        .html
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the HTML file {}", p.display()))
        })
        .transpose()?;
    let files = args
        .attach
        .iter()
        .map(|p| attached_file(p))
        .collect::<Result<Vec<_>>>()?;
    // A large file's first pass runs beside the unlock, login and lookups.
    letterme_client::seal_ahead(&files);
    let me = unlock(dir)?;
    let body = match &args.body {
        Some(b) => b.clone(),
        None => read_stdin_body()?,
    };
    // Large files are set apart: they go as blobs, read from their files as they go.
    let (mime, apart) = mime::compose_apart(&body, html.as_deref(), files, mime::BLOB_THRESHOLD)
        .context("cannot read an attachment")?;
    let draft = Draft {
        to: parse_addresses(&args.to)?,
        cc: parse_addresses(&args.cc)?,
        bcc: parse_addresses(&args.bcc)?,
        subject: args.subject.clone(),
        mime,
        apart,
        body,
        allow_plaintext: args.allow_plaintext,
        ..Draft::default()
    };
    let online = me.connect().await?;
    let report = match online.send(&draft).await {
        Err(ClientError::PlaintextRefused(list)) if ask_plaintext(&list)? => {
            online
                .send(&Draft {
                    allow_plaintext: true,
                    ..draft
                })
                .await?
        }
        r => r?,
    };
    output::send_report(&report, args.json.json)
}

pub async fn sync(dir: ProfileDir, json: bool) -> Result<()> {
    let online = unlock(dir)?.connect().await?;
    let interactive = std::io::stderr().is_terminal() && !json;
    let mut progress = |done: usize, total: usize| {
        if interactive && total > 10 {
            eprint!("\rsyncing {done}/{total}");
        }
    };
    let report = online.sync(&mut progress).await?;
    if interactive && report.fetched + report.already_had > 10 {
        eprintln!();
    }
    output::sync_report(&report, json)?;
    if !report.kt_alerts.is_empty() {
        bail!("the key-transparency check of your own address found a problem (see above)")
    }
    if report.refused.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} message(s) failed verification and were set aside",
            report.refused.len()
        )
    }
}

pub async fn watch(dir: ProfileDir, json: bool) -> Result<()> {
    let mut online = unlock(dir)?.connect().await?;
    eprintln!("watching for new mail; Ctrl-C to stop");
    let mut print =
        |me: &Unlocked, report: &letterme_client::SyncReport| output::watched(me, report, json);
    let mut no_progress = |_, _| {};
    tokio::select! {
        r = online.watch(&mut no_progress, &mut print) => Ok(r?),
        () = crate::shutdown_signal() => Ok(()),
    }
}

pub fn list(dir: ProfileDir, json: bool) -> Result<()> {
    output::message_list(&unlock(dir)?.list()?, json)
}

pub fn read(dir: ProfileDir, args: &cli::ReadArgs) -> Result<()> {
    let me = unlock(dir)?;
    output::message(&me.read(&args.id)?, args.json.json)?;
    if let Some(dir) = &args.save_attachments {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        me.save_attachments(&args.id, |attachment, n, write| {
            use letterme_client::ClientError;
            let (path, file) = attachment_file(dir, &attachment.name, n)
                .map_err(|e| ClientError::Io(format!("{e:#}")))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let written = write(&mut out).and_then(|n| {
                out.into_inner()
                    .map_err(std::io::IntoInnerError::into_error)
                    .and_then(|f| f.sync_all())
                    .map(|()| n)
                    .map_err(|e| ClientError::Io(format!("cannot write {}: {e}", path.display())))
            });
            match written {
                Ok(n) => {
                    eprintln!("saved {} ({n} bytes)", path.display());
                    Ok(())
                }
                // No attachment is left half written.
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    Err(e)
                }
            }
        })?;
    }
    Ok(())
}

/// A file for `send --attach`, named by its own file name (a large one stays in its
/// file and is read as it is sent).
fn attached_file(path: &std::path::Path) -> Result<AttachedFile> {
    AttachedFile::open(path)
        .with_context(|| format!("cannot read the attachment {}", path.display()))
}

/// The name an attachment is saved under: the sender's, made safe. Its last path
/// component; no control or invisible formatting characters (a right-to-left override
/// would make `invoice\u{202e}fdp.exe` show as `invoiceexe.pdf`), no `:` (a drive or a
/// stream on some systems), no leading dot; at most 200 bytes, its extension kept;
/// `attachment-N` when nothing is left.
fn safe_file_name(name: &str, n: usize) -> String {
    let invisible = |c: char| {
        matches!(c, '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
    };
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last
        .chars()
        .filter(|&c| !c.is_control() && !invisible(c) && c != ':')
        .collect();
    let mut clean = clean.trim().trim_start_matches('.').to_owned();
    if clean.len() > 200 {
        let ext = clean
            .rsplit_once('.')
            .map(|(_, e)| format!(".{e}"))
            .filter(|e| e.len() <= 20)
            .unwrap_or_default();
        let mut cut = 200 - ext.len();
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean = format!("{}{ext}", &clean[..cut]);
    }
    let one_name = {
        let mut parts = std::path::Path::new(&clean).components();
        matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none()
    };
    if one_name {
        clean
    } else {
        format!("attachment-{n}")
    }
}

/// A new file for an attachment in `dir`, named by [`safe_file_name`], adding ` (2)`, ` (3)`...
/// rather than overwriting a file that exists.
fn attachment_file(
    dir: &std::path::Path,
    name: &str,
    n: usize,
) -> Result<(PathBuf, std::fs::File)> {
    let clean = safe_file_name(name, n);
    let (stem, ext) = match clean.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
        _ => (clean.clone(), String::new()),
    };
    for copy in 1..1000 {
        let file = if copy == 1 {
            clean.clone()
        } else {
            format!("{stem} ({copy}){ext}")
        };
        let path = dir.join(file);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    bail!("{} holds too many files named {clean}", dir.display())
}

fn parse_address(s: &str) -> Result<Address> {
    Address::parse(s).map_err(|e| anyhow::anyhow!("{e}"))
}

fn parse_addresses(v: &[String]) -> Result<Vec<Address>> {
    v.iter().map(|s| parse_address(s)).collect()
}

fn passphrase(prompt: &str) -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set {PASSPHRASE_ENV} or run in a terminal to be asked");
    }
    rpassword::prompt_password(prompt).context("cannot read the passphrase")
}

fn new_passphrase() -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        if p.is_empty() {
            bail!("{PASSPHRASE_ENV} is empty; choose a passphrase to protect your keys");
        }
        return Ok(p);
    }
    let p = passphrase("New passphrase for your keys: ")?;
    if p.is_empty() {
        bail!("an empty passphrase would leave your keys unprotected");
    }
    if passphrase("Repeat it: ")? != p {
        bail!("the passphrases differ");
    }
    Ok(p)
}

pub fn unlock(dir: ProfileDir) -> Result<Unlocked> {
    Ok(unlock_keeping_passphrase(dir)?.0)
}

/// Unlocks, and keeps the passphrase for commands that seal the keystore again.
fn unlock_keeping_passphrase(dir: ProfileDir) -> Result<(Unlocked, zeroize::Zeroizing<String>)> {
    let profile = dir.load()?;
    let pass = zeroize::Zeroizing::new(passphrase(&format!(
        "Passphrase for {}: ",
        profile.address
    ))?);
    let me = Unlocked::open(dir, &pass)?.with_dns(CLIENT_DNS.get().cloned().unwrap_or_default());
    Ok((me, pass))
}

/// `letterme key rotate` / `letterme key revoke`.
pub async fn key(dir: ProfileDir, action: &cli::KeyAction) -> Result<()> {
    let (revoke, overlap_days, json) = match action {
        cli::KeyAction::Rotate { overlap_days, json } => (false, *overlap_days, json.json),
        cli::KeyAction::Revoke { yes, json } => {
            if !yes && !confirm_revoke()? {
                bail!("not revoked; pass --yes to revoke without being asked");
            }
            (true, 0, json.json)
        }
    };
    if overlap_days > 365 {
        bail!("--overlap-days is at most 365");
    }
    let (me, pass) = unlock_keeping_passphrase(dir)?;
    let online = me.connect().await?;
    let change = online
        .change_key(&pass, revoke, overlap_days * 86_400)
        .await?;
    output::key_change(&change, json)
}

/// `letterme kt audit DOMAIN`.
pub async fn kt_audit(dir: ProfileDir, domain: &str, json: bool) -> Result<()> {
    let online = unlock(dir)?.connect().await?;
    let report = online.audit(domain).await?;
    output::audit(&report, json)
}

/// `letterme kt forget DOMAIN`.
pub fn kt_forget(dir: &ProfileDir, domain: &str, yes: bool) -> Result<()> {
    use std::io::{BufRead as _, Write as _};
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut file = letterme_client::kt::KtFile::load(&dir.0).map_err(anyhow::Error::msg)?;
    let Some(seen) = file.domains.get(&domain) else {
        println!("this profile remembers no checkpoint of {domain}");
        return Ok(());
    };
    if !yes {
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            bail!("not forgotten; pass --yes to forget without being asked");
        }
        eprint!(
            "Forget the checkpoint of {domain} at size {}? Do this only when its operator \
             announced a restore from a backup. [y/N] ",
            seen.checkpoint.size
        );
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            bail!("not forgotten");
        }
    }
    let size = seen.checkpoint.size;
    file.domains.remove(&domain);
    file.replace_on_disk(&dir.0).map_err(anyhow::Error::msg)?;
    println!("forgot the checkpoint of {domain} at size {size}; the next check starts afresh");
    Ok(())
}

/// Asks on the terminal before a revocation; without a terminal the answer is no.
fn confirm_revoke() -> Result<bool> {
    use std::io::{BufRead as _, Write as _};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(false);
    }
    eprint!(
        "Revoke your encryption key? Mail that arrives sealed to it from now on will be \
         refused (ask its senders to send again). [y/N] "
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// `letterme block`: the user's own block list, kept by their server.
pub async fn block(dir: ProfileDir, args: &cli::BlockArgs) -> Result<()> {
    let online = unlock(dir)?.connect().await?;
    if args.list {
        output::blocks(&online.api.blocks().await?, args.json.json);
        return Ok(());
    }
    let entry = args.entry.as_deref().unwrap_or_default();
    let (entry, changed) = online.api.set_block(entry, !args.remove).await?;
    output::block_change(&entry, args.remove, changed, args.json.json);
    Ok(())
}

/// Asks on the terminal whether copies to `list` may leave end-to-end encryption; without
/// a terminal the answer is no (the error then names `--allow-plaintext`).
fn ask_plaintext(list: &[Address]) -> Result<bool> {
    use std::io::{BufRead as _, Write as _};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(false);
    }
    let names: Vec<&str> = list.iter().map(Address::as_str).collect();
    eprint!(
        "{} not on letter.me. Their copy leaves end-to-end encryption: your server sends it \
         as ordinary email, readable by the servers on the way. Send it anyway? [y/N] ",
        names.join(", ")
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

fn read_stdin_body() -> Result<String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_BODY + 1)
        .read_to_end(&mut buf)
        .context("cannot read the body from stdin")?;
    if buf.len() as u64 > MAX_STDIN_BODY {
        bail!("the body on stdin is larger than {MAX_STDIN_BODY} bytes");
    }
    String::from_utf8(buf).map_err(|_| anyhow::anyhow!("the body on stdin is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender chooses the attachment's name: it cannot climb out of the directory, hide
    /// as a dot file, carry control characters, or replace a file already there.
    #[test]
    fn a_hostile_attachment_name_stays_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let names = [
            ("../../etc/passwd", "passwd"),
            ("..\\..\\boot.ini", "boot.ini"),
            ("..", "attachment-3"),
            (".bashrc", "bashrc"),
            ("a\r\nb\u{7}.txt", "ab.txt"),
            ("", "attachment-6"),
            ("passwd", "passwd (2)"),
            ("invoice\u{202e}fdp.exe", "invoicefdp.exe"),
            ("C:evil.txt", "Cevil.txt"),
        ];
        for (i, (name, expect)) in names.iter().enumerate() {
            let path = attachment_file(d, name, i + 1).unwrap().0;
            assert_eq!(path, d.join(expect), "{name:?}");
        }
        assert_eq!(std::fs::read_dir(d).unwrap().count(), names.len());
        // A name longer than a file system takes is cut, keeping its extension.
        let long = format!("{}.pdf", "ü".repeat(300));
        let saved = attachment_file(d, &long, 9).unwrap().0;
        let file = saved.file_name().unwrap().to_str().unwrap();
        assert!(file.len() <= 200 && file.ends_with("ü.pdf"), "{file}");
    }
}
