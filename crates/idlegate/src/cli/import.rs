//! `idlegate import FILE`: a box's own configuration (ARM template, `az … show` JSON,
//! `terraform show -json`, Kubernetes manifests) written as an idlegate config. The config goes
//! to stdout or to `-o OUT` (never over an existing file without `--force`, and through a
//! temporary file renamed into place, so a refused input loses nothing); the address mapping
//! and what was ignored go to stderr. Plain parsing: every build has it.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use idlegate::import::draft::Platform;
use idlegate::import::{self, Format, Options};
use idlegate::obs::report::{Report, Status};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct ImportArgs {
    /// The box's configuration: an ARM template, `az network lb|nat gateway|public-ip show -o
    /// json`, `terraform show -json`, or Kubernetes Service manifests; `-` reads stdin
    pub file: PathBuf,
    /// Write the config to OUT instead of stdout
    #[arg(short = 'o', long = "out", value_name = "OUT")]
    pub out: Option<PathBuf>,
    /// Overwrite OUT if it exists
    #[arg(long)]
    pub force: bool,
    /// The input's format, when it is not recognised from its shape
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Import the boxes of this platform, from an input that has several
    #[arg(long, value_enum)]
    pub platform: Option<PlatformArg>,
    /// Write `time_scale = N`: the lab divides every timer by N (60: 4 min become 4 s)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub time_scale: Option<u32>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Azure,
    Terraform,
    Kubernetes,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PlatformArg {
    Azure,
    Aws,
    Gcp,
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let stdin = args.file.as_os_str() == "-";
    let name = if stdin {
        "stdin".to_string()
    } else {
        args.file.display().to_string()
    };
    if let Some(out) = &args.out {
        if !args.force && out.exists() {
            return Err(anyhow::anyhow!("import {name}: {} exists", out.display()))
                .hint("give --force to overwrite it, or another -o")
                .status(Status::Usage);
        }
    }
    let text = if stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("import: reading stdin")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("import: reading {name}"))
            .status(Status::Usage)?
    };
    let options = Options {
        format: args.format.map(|f| match f {
            FormatArg::Azure => Format::Azure,
            FormatArg::Terraform => Format::Terraform,
            FormatArg::Kubernetes => Format::Kubernetes,
        }),
        platform: args.platform.map(|p| match p {
            PlatformArg::Azure => Platform::Azure,
            PlatformArg::Aws => Platform::Aws,
            PlatformArg::Gcp => Platform::Gcp,
        }),
        time_scale: args.time_scale,
    };
    let imported = import::import(&text, &name, &options).or_else(|e| {
        let what = match e.path.as_str() {
            "" => format!("import {name}: {}", e.message),
            path => format!("import {name}: {path}: {}", e.message),
        };
        let error = Err::<import::Imported, _>(anyhow::anyhow!(what));
        let error = match e.hint {
            Some(hint) => error.hint(hint),
            None => error,
        };
        error.status(Status::Usage)
    })?;
    match &args.out {
        None => {
            let mut stdout = std::io::stdout();
            stdout
                .write_all(imported.toml.as_bytes())
                .and_then(|()| stdout.flush())
                .context("import: writing the config to stdout")?;
        }
        Some(out) => write_new(out, &imported.toml, args.force)?,
    }
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "imported {name} ({} input) as profile {}",
        imported.format.as_str(),
        imported.profile
    );
    for (from, to) in &imported.mapping {
        let _ = writeln!(err, "  {from} → {to}");
    }
    for i in &imported.ignored {
        let _ = writeln!(err, "ignored: {}: {}", i.path, i.why);
    }
    Ok(())
}

/// Writes `text` to `out` through a temporary file beside it, renamed into place. A failure
/// names OUT (the temporary file is the tool's own business) and is removed with its leftovers.
fn write_new(out: &std::path::Path, text: &str, force: bool) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".into());
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&temp, text).and_then(|()| {
        if !force && out.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it appeared while importing",
            ));
        }
        std::fs::rename(&temp, out)
    });
    let Err(e) = written else { return Ok(()) };
    let _ = std::fs::remove_file(&temp);
    let kind = e.kind();
    let failed = Err::<(), _>(e).with_context(|| format!("import: writing {}", out.display()));
    match kind {
        std::io::ErrorKind::NotFound => failed
            .with_hint(|| {
                format!(
                    "the directory {} must exist: create it, or give another -o",
                    dir.display()
                )
            })
            .status(Status::Usage),
        std::io::ErrorKind::AlreadyExists => failed
            .hint("give --force to overwrite it, or another -o")
            .status(Status::Usage),
        _ => failed,
    }
}
