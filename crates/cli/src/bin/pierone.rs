//! `pierone`: the command-line client for the Pier One API.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pierone_cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pierone: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(pierone_cli::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pierone: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
