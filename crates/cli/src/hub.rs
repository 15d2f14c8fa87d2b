//! `flashrack hub`: the fleet hub, and its tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flashrack_hub::pg::Role;
use flashrack_hub::{Hub, HubConfig, HubDb};

/// `flashrack hub --config hub.toml [token …]`
#[derive(Debug, Args)]
pub struct HubArgs {
    /// The hub's configuration (see config/hub.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Without a subcommand: run the hub until SIGTERM or Ctrl-C.
    #[command(subcommand)]
    pub command: Option<HubCommand>,
}

/// What to do with the hub's database instead of serving.
#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// Tokens for stations and operators (stored hashed in the database).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `flashrack hub token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (it is shown only this once). For a station:
    /// put it in the station's token_file.
    Add {
        /// The station's id (its station_id), or with --operator the
        /// operator's name.
        name: String,
        /// A token for an operator (dashboard and API), not a station.
        #[arg(long)]
        operator: bool,
    },
    /// Revoke every token of a station (or, with --operator, an operator).
    Revoke {
        /// The station's id or the operator's name.
        name: String,
        /// An operator's tokens, not a station's.
        #[arg(long)]
        operator: bool,
    },
}

/// Runs `flashrack hub`.
pub async fn run(args: HubArgs) -> Result<ExitCode> {
    let config = HubConfig::load(&args.config)?;
    let role = |operator| {
        if operator {
            Role::Operator
        } else {
            Role::Station
        }
    };
    match args.command {
        None => {
            let shutdown = crate::signals::shutdown()?;
            let hub = Hub::build(config).await?;
            println!("hub: http://{}/", hub.address());
            hub.run_until_stopped(shutdown).await?;
        }
        Some(HubCommand::Token(command)) => {
            let db = HubDb::connect(&config.database_url, 2)
                .await
                .context("the hub's database")?;
            match command {
                TokenCommand::Add { name, operator } => {
                    let token = db.add_token(role(operator), &name).await?;
                    println!("{token}");
                }
                TokenCommand::Revoke { name, operator } => {
                    let n = db.revoke_tokens(role(operator), &name).await?;
                    if n == 0 {
                        // A typo revoked nothing and said so with success.
                        db.close().await;
                        let whose = if operator { "operator" } else { "station" };
                        bail!(
                            "no {whose} named {name:?} holds a token that is not revoked: \
                             nothing revoked (names are exact, case included)"
                        );
                    }
                    println!("revoked {n} token(s) of {name}");
                }
            }
            db.close().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
