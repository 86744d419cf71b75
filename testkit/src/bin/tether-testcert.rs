//! Writes a self-signed certificate for the demo's and the benchmarks' TLS listeners:
//! `DIR/FILE.pem` and `DIR/FILE.key` (see [`tether_testkit::certs::Site`]), and with
//! `--combined`, both in one file for HAProxy.
use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;
use tether_testkit::certs::Site;

#[derive(Parser)]
struct Options {
    /// Directory to write into.
    #[arg(long)]
    dir: PathBuf,
    /// File name without extension.
    #[arg(long, default_value = "site")]
    file: String,
    /// DNS names (the first is the subject's common name).
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// Also write certificate and key into this one file.
    #[arg(long)]
    combined: Option<PathBuf>,
}

fn main() -> Result<()> {
    let options = Options::parse();
    let names: Vec<&str> = options.names.iter().map(String::as_str).collect();
    let site = Site::write(&options.dir, &options.file, &names)?;
    if let Some(path) = &options.combined {
        site.write_combined(path)?;
    }
    Ok(())
}
