//! `connectopus completions SHELL` (shell completion scripts, clap_complete) and
//! `connectopus man-pages DIR` (one roff page per command and subcommand, clap_mangen), both
//! made from the command line's own definition, so they never drift from it.
//! `cargo xtask dist` puts both into the Debian package.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// `connectopus completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for (on stdout). Install it as
    /// /usr/share/bash-completion/completions/connectopus (bash),
    /// /usr/share/zsh/vendor-completions/_connectopus (zsh), or
    /// /usr/share/fish/vendor_completions.d/connectopus.fish (fish).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `connectopus man-pages`.
#[derive(Debug, clap::Args)]
pub struct ManPagesArgs {
    /// The directory to write the pages to (`connectopus.1`, `connectopus-node.1`, ...).
    pub dir: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs, mut command: clap::Command) -> Result<ExitCode> {
    let name = command.get_name().to_owned();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Writes a man page for `command` and each of its subcommands, recursively, into `args.dir`;
/// prints the files written.
pub fn man_pages(args: &ManPagesArgs, command: clap::Command) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut command = command;
    command.build();
    for path in write_pages(&command, &args.dir, "")? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `<prefix><name>.1` for `command`, then its subcommands as `<prefix><name>-<sub>.1`.
fn write_pages(command: &clap::Command, dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let name = format!("{prefix}{}", command.get_name());
    // The page's title and the name in its synopsis: `connectopus-config-sign`, as git does.
    let page = command
        .clone()
        .name(name.clone())
        .bin_name(name.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut bytes)
        .with_context(|| format!("rendering {name}.1"))?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    let mut written = vec![path];
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        written.extend(write_pages(sub, dir, &format!("{name}-"))?);
    }
    Ok(written)
}
