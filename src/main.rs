use clap::Parser;

fn main() -> std::process::ExitCode {
    // Installed as `kubectl-artgc`, kubectl runs it for `kubectl artgc ...`: its help says so.
    let as_plugin = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .is_some_and(|n| n == "kubectl-artgc");
    let cli = match as_plugin {
        true => {
            use clap::{CommandFactory, FromArgMatches};
            let matches = artgc::cli::Cli::command()
                .bin_name("kubectl artgc")
                .get_matches();
            artgc::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
        }
        false => artgc::cli::Cli::parse(),
    };
    artgc::telemetry::init(cli.log_format, &cli.log_level);
    std::process::ExitCode::from(artgc::cli::run(cli))
}
