//! `docker-credential-pierone`: the Docker credential helper that hands out OAuth 2.0 tokens.

use std::process::ExitCode;

fn main() -> ExitCode {
    let action = std::env::args().nth(1).unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(pierone_cli::credential_helper(
        &action,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    ));
    if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
