//! `letterme`: the binary is glue. It parses the command line, sets up logging, the async
//! runtime and the shutdown signal, and dispatches: the operator's commands to
//! [`server_cmd`], the user's to [`client_cmd`] and [`proxy`], all printing to [`output`].

mod cli;
mod client_cmd;
mod demo;
mod output;
mod proxy;
mod server_cmd;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;
use letterme_client::profile::ProfileDir;

use cli::{AccountCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server_side = matches!(
        cli.command,
        Command::Serve(_) | Command::Init(_) | Command::Proxy(cli::ProxyArgs { action: None, .. })
    );
    init_logging(if server_side { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain joined, no backtrace.
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LETTERME_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<()> {
    let _ = client_cmd::CLIENT_DNS.set(cli.dns.clone());
    let profile_dir = ProfileDir(
        cli.profile
            .clone()
            .unwrap_or_else(client_cmd::default_profile),
    );
    match &cli.command {
        Command::Init(args) => server_cmd::init(args).await,
        Command::Serve(args) => {
            server_cmd::serve(args.config.as_deref(), args.skip_dns_check).await
        }
        Command::Dns(args) => server_cmd::dns(&args.config).await,
        Command::Check(args) => server_cmd::check(&args.config.config, args.json.json).await,
        Command::DomainKey(action) => server_cmd::domain_key(action).await,
        Command::Queue(args) => server_cmd::queue(&args.config.config, args.json.json).await,
        Command::Demo => demo::run().await,
        Command::Account(AccountCommand::Create {
            address,
            server,
            invite,
            json,
        }) => {
            client_cmd::account_create(profile_dir, address, server, invite.as_deref(), json.json)
                .await
        }
        Command::Account(AccountCommand::Join {
            address,
            code,
            server,
            json,
        }) => client_cmd::account_join(profile_dir, address, code, server, json.json).await,
        Command::Device(action) => client_cmd::device(profile_dir, action).await,
        Command::Send(args) => client_cmd::send(profile_dir, args).await,
        Command::Sync(args) if args.watch => client_cmd::watch(profile_dir, args.json.json).await,
        Command::Sync(args) => client_cmd::sync(profile_dir, args.json.json).await,
        Command::List(json) => client_cmd::list(profile_dir, json.json),
        Command::Read(args) => client_cmd::read(profile_dir, args),
        Command::Block(args) => client_cmd::block(profile_dir, args).await,
        Command::Key(action) => client_cmd::key(profile_dir, action).await,
        Command::Kt(cli::KtAction::Audit { domain, json }) => {
            client_cmd::kt_audit(profile_dir, domain, json.json).await
        }
        Command::Kt(cli::KtAction::Forget { domain, yes }) => {
            client_cmd::kt_forget(&profile_dir, domain, *yes)
        }
        Command::Proxy(args) => match &args.action {
            Some(cli::ProxyAction::Credentials(json)) => {
                proxy::credentials(&profile_dir, json.json)
            }
            None => {
                proxy::run(
                    profile_dir,
                    args.imap_listen,
                    args.smtp_listen,
                    args.allow_plaintext,
                    args.attachments.into(),
                )
                .await
            }
        },
    }
}

/// Resolves on Ctrl-C or SIGTERM: the one shutdown signal of `serve`, `proxy` and
/// `sync --watch`.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
