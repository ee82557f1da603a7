//! `idlegate flows`: asks a running gateway (by control socket, or by lab name) for its
//! flows and prints them as a table or JSON; `flows expire` expires some now.

use super::DEFAULT_CONTROL;
use anyhow::Result;
use clap::{Args, Subcommand};
use idlegate::gateway::control::{self, FlowRow, Request, Response};
use idlegate::lab;
use idlegate::obs::report::{Report, Status};
use std::path::PathBuf;

#[derive(Args)]
pub struct FlowsArgs {
    #[command(subcommand)]
    action: Option<FlowsAction>,
    /// Ask the gateway of this running lab.
    #[arg(long, global = true, conflicts_with = "control")]
    lab: Option<String>,
    /// Ask the gateway with this control socket.
    #[arg(long, global = true, default_value = DEFAULT_CONTROL)]
    control: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum FlowsAction {
    /// Expire flows now, with their rules' expiry actions, as a platform event would; say
    /// which: --rule RULE or --all.
    #[command(group(clap::ArgGroup::new("selector").required(true).args(["rule", "all"])))]
    Expire {
        /// Only the flows of this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Every flow.
        #[arg(long)]
        all: bool,
    },
}

/// `idlegate flows` and `idlegate flows expire`.
pub fn run(args: FlowsArgs) -> Result<()> {
    if let Some(name) = &args.lab {
        lab::ensure_up(name)?;
    }
    let path = args.lab.as_deref().map_or(args.control, lab::control_path);
    let request = match &args.action {
        None => Request::Flows,
        Some(FlowsAction::Expire { rule, all }) => Request::Expire {
            rule: rule.clone(),
            all: *all,
        },
    };
    match control::ask(&path, &request)? {
        Response::Error { message } => anyhow::bail!("the gateway refused: {message}"),
        // Checked by the gateway before anything is expired: a mistake in the arguments.
        Response::NoRule { rule, rules } => {
            return Err(anyhow::anyhow!(
                "flows expire --rule {rule}: the gateway has no such rule"
            ))
            .hint(format!(
                "its rules: {} (`idlegate flows` shows their flows)",
                rules.join(", ")
            ))
            .status(Status::Usage)
        }
        Response::Expired { count } if args.json => {
            println!("{}", serde_json::json!({ "expired": count }))
        }
        Response::Expired { count } => println!("expired {count} flow(s)"),
        Response::Flows { flows } if args.json => {
            println!("{}", serde_json::to_string_pretty(&flows)?)
        }
        Response::Flows { flows } => print!("{}", flow_table(&flows)),
    }
    Ok(())
}

fn flow_table(flows: &[FlowRow]) -> String {
    let mut out = format!(
        "{:<16} {:<5} {:<22} {:<22} {:<22} {:<12} {:>9} {:>11}\n",
        "RULE", "PROTO", "REMOTE", "PUBLIC", "PRIVATE", "STATE", "IDLE FOR", "EXPIRES IN"
    );
    for f in flows {
        out += &format!(
            "{:<16} {:<5} {:<22} {:<22} {:<22} {:<12} {:>8.1}s {:>10.1}s\n",
            f.rule,
            f.protocol,
            f.remote,
            f.public,
            f.private,
            f.state,
            f.idle_for_s,
            f.expires_in_s
        );
    }
    out += &format!("{} flow(s)\n", flows.len());
    out
}
