//! `idlegate completions SHELL` and `idlegate man`: shell completions and manual pages made
//! from the command line's own clap definitions (`clap_complete`, `clap_mangen`), so they never
//! drift from the commands they describe.
//!
//! Contract: completions go to standard output. `man` writes idlegate(1) to standard output,
//! or with `--out DIR` one page per command into an existing directory: `idlegate.1`, then
//! `idlegate-lab.1`, `idlegate-lab-up.1`, … (a command's page is named by its path); pages of
//! those names are replaced, nothing else in the directory is touched.

use anyhow::{Context, Result};
use clap::{Args, Command, CommandFactory};
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write one page per command (idlegate.1, idlegate-lab-up.1, …) into this existing
    /// directory instead of idlegate(1) to standard output.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `idlegate completions SHELL`.
pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut command = crate::Cli::command();
    // Made in memory first: clap_complete panics on a failed write, and a reader that stops
    // early (`| head`) is no failure.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "idlegate", &mut script);
    print_all(&script, "the completions")
}

/// `idlegate man [--out DIR]`.
pub fn man(args: &ManArgs) -> Result<()> {
    let command = crate::Cli::command();
    let Some(dir) = &args.out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .context("rendering idlegate(1)")?;
        return print_all(&page, "the manual page");
    };
    if !dir.is_dir() {
        use idlegate::obs::report::{Report, Status};
        return Err(anyhow::anyhow!("--out {}: not a directory", dir.display()))
            .hint(format!("create it first: mkdir -p {}", dir.display()))
            .status(Status::Usage);
    }
    let written = write_pages(command, dir)?;
    println!("wrote {written} manual pages to {}", dir.display());
    Ok(())
}

/// Writes `bytes` to standard output; a reader that closed early (EPIPE) took what it wanted.
fn print_all(bytes: &[u8], what: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.with_context(|| format!("writing {what}")),
    }
}

/// Writes the page of `command` and of every command under it into `dir`; how many.
fn write_pages(command: Command, dir: &Path) -> Result<usize> {
    let name = command.get_name().to_string();
    let mut written = 0;
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let path_name = format!("{name}-{}", sub.get_name());
        written += write_pages(sub.clone().name(path_name), dir)?;
    }
    let file = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .with_context(|| format!("rendering {name}(1)"))?;
    std::fs::write(&file, page).with_context(|| format!("writing {}", file.display()))?;
    Ok(written + 1)
}
