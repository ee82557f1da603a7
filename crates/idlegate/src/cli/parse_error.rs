//! A mistake the command-line parser (clap) finds, told the way every other error is: its
//! message as `idlegate: <what is wrong>` (clap's `error: ` dropped, a list it gives on the
//! next lines joined onto the line), clap's usage line(s), then `hint: <what to do>`: clap's
//! tip, if it has one, and where the command's usage is. It exits 2. `--help` and `--version`
//! print as clap prints them. No colour: the text is the same on a terminal and in a log.

use clap::error::ErrorKind;

/// What to print for `error`, found while parsing `args` (the program's name first) against
/// `command`, or `None` when clap's own output is right (help, version).
pub fn render(error: &clap::Error, command: &clap::Command, args: &[String]) -> Option<String> {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return None;
    }
    // StyledStr's Display is the plain text, without terminal styling.
    let text = error.render().to_string();
    let mut message: Vec<String> = Vec::new();
    let mut usage: Vec<String> = Vec::new();
    let mut tips: Vec<String> = Vec::new();
    let mut in_usage = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(first) = line.strip_prefix("error: ") {
            message.push(first.trim().to_string());
        } else if let Some(tip) = trimmed.strip_prefix("tip: ") {
            tips.push(tip.to_string());
            in_usage = false;
        } else if line.starts_with("Usage: ") {
            usage.push(line.to_string());
            in_usage = true;
        } else if trimmed.is_empty() {
            in_usage = false;
        } else if trimmed.starts_with("For more information") {
            // Replaced by the hint.
        } else if in_usage {
            usage.push(line.to_string());
        } else if usage.is_empty() && tips.is_empty() {
            message.push(trimmed.to_string());
        }
    }
    let mut out = String::from("idlegate: ");
    if let Some((first, rest)) = message.split_first() {
        out += first;
        if !rest.is_empty() {
            out += if first.ends_with(':') { " " } else { ": " };
            out += &rest.join(", ");
        }
    } else {
        out += "the command line is not valid";
    }
    for line in usage {
        out.push('\n');
        out += &line;
    }
    let help = format!("`{} --help` shows its usage", command_path(command, args));
    tips.push(help);
    out += "\nhint: ";
    out += &tips.join("; ");
    Some(out)
}

/// `idlegate` and the subcommands `args` name before the first argument that is not one.
fn command_path(command: &clap::Command, args: &[String]) -> String {
    let mut path = vec![command.get_name().to_string()];
    let mut current = command;
    for arg in args.iter().skip(1) {
        if arg.starts_with('-') {
            continue;
        }
        match current.find_subcommand(arg) {
            Some(sub) => {
                path.push(sub.get_name().to_string());
                current = sub;
            }
            None => break,
        }
    }
    path.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Parser, Subcommand};

    #[derive(Parser, Debug)]
    #[command(name = "idlegate")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand, Debug)]
    enum Command {
        Probe(Probe),
        #[command(subcommand)]
        Lab(Lab),
    }

    #[derive(Args, Debug)]
    struct Probe {
        #[arg(long, value_parser = crate::cli::parse_duration)]
        max: Option<std::time::Duration>,
        #[arg(long)]
        force: bool,
        #[arg(long, required = true)]
        connect: Vec<String>,
    }

    #[derive(Subcommand, Debug)]
    enum Lab {
        Up {
            #[arg(long)]
            name: String,
        },
    }

    fn rendered(args: &[&str]) -> Option<String> {
        use clap::CommandFactory;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let error = Cli::try_parse_from(&args).expect_err("a parse error");
        render(&error, &Cli::command(), &args)
    }

    #[test]
    fn a_bad_value_reads_as_every_error_with_a_hint_to_the_subcommands_help() {
        let text = rendered(&["idlegate", "probe", "--connect", "x", "--max", "abc"]).unwrap();
        assert_eq!(
            text,
            "idlegate: invalid value 'abc' for '--max <MAX>': not a duration (like 30s or 2m)\n\
             hint: `idlegate probe --help` shows its usage"
        );
    }

    #[test]
    fn a_missing_argument_is_named_on_the_first_line_with_the_usage_after_it() {
        let text = rendered(&["idlegate", "probe"]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "idlegate: the following required arguments were not provided: --connect <CONNECT>"
        );
        assert!(lines[1].starts_with("Usage: idlegate probe"), "{text}");
        assert_eq!(
            lines.last(),
            Some(&"hint: `idlegate probe --help` shows its usage")
        );
    }

    #[test]
    fn clap_s_tip_becomes_the_hint() {
        let text = rendered(&["idlegate", "probe", "--connect", "x", "--forc"]).unwrap();
        assert!(
            text.starts_with("idlegate: unexpected argument '--forc' found\n"),
            "{text}"
        );
        assert_eq!(
            text.lines().last(),
            Some("hint: a similar argument exists: '--force'; `idlegate probe --help` shows its usage")
        );
        assert!(!text.contains("error:"), "{text}");
    }

    #[test]
    fn the_hint_names_the_innermost_subcommand() {
        let text = rendered(&["idlegate", "lab", "up", "--nme", "x"]).unwrap();
        assert!(
            text.ends_with("`idlegate lab up --help` shows its usage"),
            "{text}"
        );
    }

    #[test]
    fn help_and_version_are_left_to_clap() {
        assert_eq!(rendered(&["idlegate", "--help"]), None);
        assert_eq!(rendered(&["idlegate", "probe", "--help"]), None);
    }
}
